import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The build lands inside the Python package, which serves it at "/".
export default defineConfig({
  plugins: [react()],
  base: "/",
  build: {
    outDir: "../src/pixelmill/studio",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    // no inline scripts or data: modules: the page's CSP allows only 'self'
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 1000,
  },
  server: {
    proxy: {
      "/api": "http://127.0.0.1:8000",
      "/v1": "http://127.0.0.1:8000",
      "/admin": "http://127.0.0.1:8000",
      "/files": "http://127.0.0.1:8000",
      "/healthz": "http://127.0.0.1:8000",
    },
  },
});
