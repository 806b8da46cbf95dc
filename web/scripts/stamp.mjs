// Records a hash of the Studio sources in the build, so a stale committed build is caught:
// tests/studio/test_studio_build.py recomputes the same hash (see pixelmill.studio_sources).
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";

const webDir = fileURLToPath(new URL("..", import.meta.url));
const outDir = join(webDir, "..", "src", "pixelmill", "studio");
const SKIP = new Set(["node_modules", "dist"]);

function walk(dir, out) {
  for (const name of readdirSync(dir)) {
    if (SKIP.has(name) || name.startsWith(".")) continue;
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path, out);
    else out.push(relative(webDir, path).split(sep).join("/"));
  }
  return out;
}

const files = walk(webDir, []).sort();
const hash = createHash("sha256");
for (const f of files) {
  hash.update(f + "\0");
  hash.update(readFileSync(join(webDir, f)));
  hash.update("\0");
}
const info = { sourceHash: hash.digest("hex"), files: files.length };
writeFileSync(join(outDir, "build-info.json"), JSON.stringify(info, null, 2) + "\n");
console.log(`studio build stamped: ${info.sourceHash.slice(0, 12)} over ${files.length} source files`);
