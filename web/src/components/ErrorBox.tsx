import { useEffect, useState } from "react";
import { ApiError, fmtCredits } from "../api";

/** An API error as a person should read it: 402 with its per-node breakdown, 429 with when to retry,
 * validation problems listed. */
export function ErrorBox({ error, onDismiss }: { error: unknown; onDismiss?: () => void }) {
  const [now, setNow] = useState(() => Date.now());
  const [shownAt, setShownAt] = useState(() => Date.now());
  const retryAfter =
    error instanceof ApiError ? error.retryAfter ?? error.body?.retry_after ?? error.body?.error?.retry_after ?? null : null;
  useEffect(() => {
    setShownAt(Date.now());
    setNow(Date.now());
    if (retryAfter === null) return;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [error, retryAfter]);
  if (!error) return null;
  if (!(error instanceof ApiError)) {
    return (
      <div className="error" role="alert">
        <strong>Something went wrong.</strong> {String((error as Error)?.message ?? error)}
        {onDismiss && <button className="link" onClick={onDismiss}>Dismiss</button>}
      </div>
    );
  }
  const e = error;
  let title = "Request failed";
  if (e.status === 402) title = "Not enough credits";
  else if (e.status === 429) title = "Too many requests";
  else if (e.status === 422 || e.status === 400) title = "Please fix the request";
  else if (e.status === 401) title = "Not signed in";
  else if (e.status === 403) title = "Not allowed";
  else if (e.status === 404) title = "Not found";
  else if (e.status === 0) title = "Server unreachable";
  else if (e.status >= 500) title = "Server error";
  const left = retryAfter !== null ? Math.max(0, Math.ceil(retryAfter - (now - shownAt) / 1000)) : null;
  return (
    <div className={`error status-${e.status}`} role="alert" data-testid="error-box">
      <div className="error-head">
        <strong>{title}</strong>
        <span className="muted"> ({e.status ? `HTTP ${e.status}, ` : ""}{e.code})</span>
        {onDismiss && <button className="link" onClick={onDismiss} aria-label="Dismiss error">Dismiss</button>}
      </div>
      {!(e.status === 402 && e.required !== null) && <div>{e.message}</div>}
      {e.status === 402 && (
        <div className="breakdown" data-testid="credit-breakdown">
          <div>
            Needs <strong>{fmtCredits(e.required)}</strong> credits; <strong>{fmtCredits(e.available)}</strong> available.
          </div>
          {e.breakdown.length > 0 && (
            <table>
              <thead>
                <tr><th>Node</th><th>Type</th><th className="num">Credits</th></tr>
              </thead>
              <tbody>
                {e.breakdown.map((b) => (
                  <tr key={b.nodeId}><td>{b.nodeId}</td><td>{b.type}</td><td className="num">{fmtCredits(b.credits)}</td></tr>
                ))}
              </tbody>
            </table>
          )}
        </div>
      )}
      {e.status === 429 && (
        <div data-testid="retry-after">
          {left !== null ? (left > 0 ? `You can retry in ${left} s.` : "You can retry now.") : "Wait a moment, then retry."}
        </div>
      )}
      {e.problems.length > 0 && (
        <ul className="problems">
          {e.problems.map((p, i) => (
            <li key={i}>
              {p.node ? <code>{p.node}</code> : null} {p.loc?.length ? <code>{p.loc.join(".")}</code> : null} {p.msg}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

export function Empty({ title, children }: { title: string; children?: React.ReactNode }) {
  return (
    <div className="empty">
      <div className="empty-title">{title}</div>
      {children && <div className="muted">{children}</div>}
    </div>
  );
}

export function CopyButton({ text, label = "Copy" }: { text: string; label?: string }) {
  const [done, setDone] = useState(false);
  return (
    <button
      type="button"
      className="secondary small"
      onClick={async () => {
        try {
          await navigator.clipboard.writeText(text);
          setDone(true);
          setTimeout(() => setDone(false), 1500);
        } catch {
          /* clipboard may be unavailable over plain http */
        }
      }}
    >
      {done ? "Copied" : label}
    </button>
  );
}
