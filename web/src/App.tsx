import { useCallback, useEffect, useState } from "react";
import { api, ApiError, fmtCredits, session, setUnauthorizedHandler } from "./api";
import { ErrorBox } from "./components/ErrorBox";
import { Playground } from "./pages/Playground";
import { Workflows } from "./pages/Workflows";
import { Canvas } from "./pages/Canvas";
import { Runs } from "./pages/Runs";
import { Webhooks } from "./pages/Webhooks";
import { Account } from "./pages/Account";
import { Admin } from "./pages/Admin";

export function useRoute(): string[] {
  const read = () => window.location.hash.replace(/^#\/?/, "").split("?")[0].split("/").filter(Boolean).map(decodeURIComponent);
  const [parts, setParts] = useState(read);
  useEffect(() => {
    const on = () => setParts(read());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return parts;
}

export function go(path: string) {
  window.location.hash = "#/" + path.replace(/^\//, "");
}

/** Ask the shell to re-read the balance (after a run was charged, for example). */
export function refreshCredits() {
  window.dispatchEvent(new Event("pixelmill:credits"));
}

interface Me {
  id: string;
  name: string;
  plan: string;
  credits: number;
}

function SignIn({ onDone }: { onDone: () => void }) {
  const [key, setKey] = useState("");
  const [adminKey, setAdminKey] = useState("");
  const [showAdmin, setShowAdmin] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const submit = async (ev: React.FormEvent) => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const k = key.trim();
      const a = adminKey.trim();
      if (!k && !a) throw new Error("Enter an API key (sk-…), an admin key, or both.");
      if (k) await api("/api/v1/account", { key: k });
      if (a) await api("/admin/v1/accounts?limit=1", { auth: "admin", key: a });
      session.set(k || null, a || null);
      onDone();
    } catch (e) {
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        setError(new Error(e.message + " — check the key and try again."));
      } else if (e instanceof ApiError && e.status === 404 && adminKey.trim()) {
        setError(new Error("This server has no admin API (PIXELMILL_ADMIN_KEY is not set)."));
      } else setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main className="signin">
      <form className="card signin-card" onSubmit={submit} aria-labelledby="signin-title">
        <div className="brand big"><Logo /> pixelmill <span className="muted">Studio</span></div>
        <h1 id="signin-title">Sign in</h1>
        <p className="muted">
          Use an API key of this server. It stays in this browser tab only (session storage) and is sent only in request headers.
        </p>
        <label>
          API key
          <input
            name="apiKey"
            type="password"
            autoComplete="off"
            placeholder="sk-…"
            value={key}
            onChange={(e) => setKey(e.target.value)}
            autoFocus
          />
        </label>
        {showAdmin ? (
          <label>
            Admin key (optional: unlocks the admin pages)
            <input name="adminKey" type="password" autoComplete="off" value={adminKey} onChange={(e) => setAdminKey(e.target.value)} />
          </label>
        ) : (
          <button type="button" className="link" onClick={() => setShowAdmin(true)}>I also have an admin key</button>
        )}
        <ErrorBox error={error} />
        <button type="submit" disabled={busy}>{busy ? "Checking…" : "Sign in"}</button>
        <details className="hint">
          <summary>No key yet?</summary>
          <p>On the server, create one with:</p>
          <pre>pixelmill keys create --account me</pre>
          <p>(or <code>.venv/bin/pixelmill keys create --account me</code> in the checkout that runs <code>./serve</code>).</p>
        </details>
      </form>
    </main>
  );
}

export function Logo() {
  return (
    <svg width="22" height="22" viewBox="0 0 24 24" aria-hidden="true" className="logo">
      <rect x="2" y="2" width="9" height="9" rx="2" />
      <rect x="13" y="2" width="9" height="9" rx="2" className="alt" />
      <rect x="2" y="13" width="9" height="9" rx="2" className="alt" />
      <rect x="13" y="13" width="9" height="9" rx="2" />
    </svg>
  );
}

const NAV: { path: string; label: string; admin?: boolean; user?: boolean }[] = [
  { path: "playground", label: "Playground", user: true },
  { path: "workflows", label: "Workflows", user: true },
  { path: "runs", label: "Runs", user: true },
  { path: "webhooks", label: "Webhooks", user: true },
  { path: "account", label: "Credits & usage", user: true },
  { path: "admin", label: "Admin", admin: true },
];

export function App() {
  const [signedIn, setSignedIn] = useState(() => !!(session.apiKey() || session.adminKey()));
  const [me, setMe] = useState<Me | null>(null);
  const [menuOpen, setMenuOpen] = useState(false);
  const route = useRoute();
  const hasKey = !!session.apiKey();
  const hasAdmin = !!session.adminKey();

  const signOut = useCallback(() => {
    session.clear();
    setMe(null);
    setSignedIn(false);
    go("");
  }, []);

  useEffect(() => setUnauthorizedHandler(signOut), [signOut]);

  const loadMe = useCallback(async () => {
    if (!session.apiKey()) return;
    try {
      setMe(await api<Me>("/api/v1/account?entries=0&days=1"));
    } catch {
      /* shown by the pages */
    }
  }, []);

  useEffect(() => {
    if (!signedIn) return;
    loadMe();
    const on = () => loadMe();
    window.addEventListener("pixelmill:credits", on);
    return () => window.removeEventListener("pixelmill:credits", on);
  }, [signedIn, loadMe]);

  useEffect(() => setMenuOpen(false), [route.join("/")]);

  if (!signedIn) return <SignIn onDone={() => { setSignedIn(true); go(session.apiKey() ? "playground" : "admin"); }} />;

  const page = route[0] || (hasKey ? "playground" : "admin");
  let content: React.ReactNode;
  if (!hasKey && page !== "admin") {
    content = <div className="page"><ErrorBox error={new Error("Signed in with an admin key only: sign in with an API key to use this page.")} /></div>;
  } else if (page === "playground") content = <Playground />;
  else if (page === "workflows" && route[1]) content = <Canvas workflowId={route[1]} />;
  else if (page === "workflows") content = <Workflows />;
  else if (page === "runs") content = <Runs executionId={route[1]} />;
  else if (page === "webhooks") content = <Webhooks />;
  else if (page === "account") content = <Account />;
  else if (page === "admin") content = hasAdmin ? <Admin accountId={route[1]} /> : <div className="page"><ErrorBox error={new Error("The admin pages need an admin key: sign out and sign in with one.")} /></div>;
  else content = <div className="page"><h1>Not found</h1><p><a href="#/playground">Open the playground</a></p></div>;

  return (
    <div className={`shell ${menuOpen ? "menu-open" : ""}`}>
      <a className="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>Skip to content</a>
      <header className="topbar">
        <button className="menu-toggle secondary small" aria-label="Menu" aria-expanded={menuOpen} onClick={() => setMenuOpen(!menuOpen)}>☰</button>
        <a className="brand" href={hasKey ? "#/playground" : "#/admin"}><Logo /> pixelmill <span className="muted">Studio</span></a>
        <div className="spacer" />
        {me && (
          <a className="credits-pill" href="#/account" data-testid="credits" title={`Plan ${me.plan}`}>
            {fmtCredits(me.credits)} credits
          </a>
        )}
        {me && <span className="muted account-name">{me.name}</span>}
        <button className="secondary small" onClick={signOut}>Sign out</button>
      </header>
      <nav className="sidebar" aria-label="Studio">
        {NAV.filter((n) => (n.admin ? hasAdmin : hasKey)).map((n) => (
          <a key={n.path} href={`#/${n.path}`} className={page === n.path ? "active" : ""} aria-current={page === n.path ? "page" : undefined}>
            {n.label}
          </a>
        ))}
        <div className="sidebar-foot muted">
          <a href="/docs" target="_blank" rel="noreferrer">API reference</a>
        </div>
      </nav>
      <main id="main" tabIndex={-1} className="content">{content}</main>
    </div>
  );
}
