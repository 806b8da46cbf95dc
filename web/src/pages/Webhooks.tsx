import { Fragment, useCallback, useEffect, useState } from "react";
import { api, fmtTime, shortId } from "../api";
import { CopyButton, Empty, ErrorBox } from "../components/ErrorBox";

interface Delivery {
  attemptedAt: number;
  statusCode: number | null;
  latencyMs: number | null;
  error: string | null;
}
interface WebhookEvent {
  id: string;
  executionId: string | null;
  type: string;
  url: string;
  state: string;
  attempts: number;
  nextAttemptAt: number | null;
  createdAt: number;
  deliveredAt: number | null;
  deliveries: Delivery[];
}

export function Webhooks() {
  const [url, setUrl] = useState("");
  const [savedUrl, setSavedUrl] = useState<string | null>(null);
  const [secret, setSecret] = useState<string | null>(null);
  const [reveal, setReveal] = useState(false);
  const [rotated, setRotated] = useState(false);
  const [events, setEvents] = useState<WebhookEvent[] | null>(null);
  const [state, setState] = useState("");
  const [open, setOpen] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [notice, setNotice] = useState<string | null>(null);

  const loadEvents = useCallback(async () => {
    try {
      const q = new URLSearchParams({ limit: "50" });
      if (state) q.set("state", state);
      setEvents((await api<{ data: WebhookEvent[] }>(`/api/v1/webhooks/events?${q}`)).data);
    } catch (e) {
      setError(e);
    }
  }, [state]);

  useEffect(() => {
    api<{ url: string | null }>("/api/v1/webhooks/config").then((r) => { setSavedUrl(r.url); setUrl(r.url ?? ""); }).catch(setError);
    api<{ key: string }>("/api/v1/webhooks/secret").then((r) => setSecret(r.key)).catch(setError);
  }, []);
  useEffect(() => {
    loadEvents();
  }, [loadEvents]);

  const saveUrl = async (e: React.FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
      const r = await api<{ url: string | null }>("/api/v1/webhooks/config", { method: "PUT", body: { url: url.trim() || null } });
      setSavedUrl(r.url);
      setNotice(r.url ? "Webhook URL saved." : "Webhook URL cleared.");
    } catch (err) {
      setError(err);
    }
  };
  const rotate = async () => {
    if (!window.confirm("Rotate the signing secret? The previous secret keeps signing until the next rotation.")) return;
    try {
      const r = await api<{ key: string; previousKeyActive: boolean }>("/api/v1/webhooks/secret/rotate", { method: "POST" });
      setSecret(r.key);
      setRotated(r.previousKeyActive);
      setReveal(true);
    } catch (e) {
      setError(e);
    }
  };
  const redeliver = async (id: string) => {
    try {
      await api(`/api/v1/webhooks/events/${id}/redeliver`, { method: "POST" });
      setNotice("Queued for delivery again.");
      loadEvents();
    } catch (e) {
      setError(e);
    }
  };

  return (
    <div className="page">
      <h1>Webhooks</h1>
      <ErrorBox error={error} onDismiss={() => setError(null)} />
      {notice && <div className="notice" role="status">{notice} <button className="link" onClick={() => setNotice(null)}>OK</button></div>}
      <div className="cards-2">
        <form className="card" onSubmit={saveUrl}>
          <h2>Endpoint</h2>
          <p className="muted">Every execution event of this account is sent here, signed with Standard Webhooks headers.</p>
          <label>
            URL
            <input type="url" placeholder="https://example.com/pixelmill-events" value={url} onChange={(e) => setUrl(e.target.value)} />
          </label>
          <button type="submit">{url.trim() ? "Save" : "Clear"}</button> {savedUrl && <span className="muted small-text">Now: {savedUrl}</span>}
        </form>
        <div className="card">
          <h2>Signing secret</h2>
          <div className="secret">
            <code data-testid="webhook-secret">{secret ? (reveal ? secret : secret.slice(0, 8) + "•".repeat(16)) : "…"}</code>
          </div>
          <div className="actions">
            <button className="secondary small" onClick={() => setReveal(!reveal)}>{reveal ? "Hide" : "Reveal"}</button>
            {secret && <CopyButton text={secret} />}
            <button className="secondary small" onClick={rotate}>Rotate</button>
          </div>
          {rotated && <p className="muted small-text">The previous secret still signs too (a second <code>v1,</code> signature) until the next rotation.</p>}
          <pre className="small-text">{`from standardwebhooks import Webhook\nWebhook(SECRET).verify(raw_body, headers)`}</pre>
        </div>
      </div>
      <div className="page-head">
        <h2>Delivery log</h2>
        <div className="spacer" />
        <select value={state} onChange={(e) => setState(e.target.value)} aria-label="Filter by state">
          <option value="">all</option>
          <option value="pending">pending</option>
          <option value="delivered">delivered</option>
          <option value="failed">failed</option>
        </select>
        <button className="secondary small" onClick={loadEvents}>Refresh</button>
      </div>
      {events && events.length === 0 && <Empty title="No webhook events">Set an endpoint above, or pass a webhook_url with a request; deliveries show here with every attempt.</Empty>}
      {events && events.length > 0 && (
        <div className="table-wrap">
          <table className="list">
            <thead>
              <tr><th>Event</th><th>State</th><th>Attempts</th><th>Created</th><th>URL</th><th /></tr>
            </thead>
            <tbody>
              {events.map((ev) => (
                <Fragment key={ev.id}>
                  <tr>
                    <td>
                      <button className="link" onClick={() => setOpen(open === ev.id ? null : ev.id)} aria-expanded={open === ev.id}>{ev.type}</button>
                      {ev.executionId && <div className="small-text"><a href={`#/runs/${ev.executionId}`}>{shortId(ev.executionId)}</a></div>}
                    </td>
                    <td><span className={`badge ${ev.state}`}>{ev.state}</span>{ev.nextAttemptAt ? <div className="muted small-text">next {fmtTime(ev.nextAttemptAt)}</div> : null}</td>
                    <td>{ev.attempts}</td>
                    <td>{fmtTime(ev.createdAt)}</td>
                    <td className="ellipsis" title={ev.url}>{ev.url}</td>
                    <td><button className="secondary small" onClick={() => redeliver(ev.id)}>Redeliver</button></td>
                  </tr>
                  {open === ev.id && (
                    <tr className="detail-row">
                      <td colSpan={6}>
                        {ev.deliveries.length === 0 ? <span className="muted">No attempts yet.</span> : (
                          <ul className="attempts">
                            {ev.deliveries.map((d, i) => (
                              <li key={i}>{fmtTime(d.attemptedAt)} — {d.statusCode ? `HTTP ${d.statusCode}` : "no answer"}{d.latencyMs !== null ? ` in ${d.latencyMs} ms` : ""}{d.error ? ` — ${d.error}` : ""}</li>
                            ))}
                          </ul>
                        )}
                      </td>
                    </tr>
                  )}
                </Fragment>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}
