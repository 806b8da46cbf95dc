import { useCallback, useEffect, useState } from "react";
import { api, fmtCredits, fmtTime, session, shortId } from "../api";
import { CopyButton, Empty, ErrorBox } from "../components/ErrorBox";

interface AccountInfo {
  id: string;
  name: string;
  plan: string;
  planLimits: Record<string, unknown> | null;
  credits: number;
  executions: { total: number; by_status: Record<string, number> } | null;
  creditsSpent: number;
  creditsHeld: number;
  ledger: { id: number; kind: string; amount: number; execution_id: string | null; note: string | null; created_at: number }[];
  usageByDay: { day: string; credits: number; byModel: Record<string, number> }[];
}

const PALETTE = ["#6d5dfc", "#22c3a6", "#f5a524", "#e5484d", "#3e9bff", "#a35bd6", "#8d9b2f"];

export function UsageChart({ days }: { days: AccountInfo["usageByDay"] }) {
  const models = Array.from(new Set(days.flatMap((d) => Object.keys(d.byModel)))).sort();
  const max = Math.max(0.0001, ...days.map((d) => d.credits));
  const W = 640, H = 180, pad = 28;
  const bw = (W - pad) / Math.max(1, days.length);
  if (!days.some((d) => d.credits > 0)) return <Empty title="No usage in this period">Credits spent per day and per model show here.</Empty>;
  return (
    <figure className="chart" data-testid="usage-chart">
      <svg viewBox={`0 0 ${W} ${H + 20}`} role="img" aria-label="Credits per day, stacked by model">
        <line x1={pad} y1={H} x2={W} y2={H} className="axis" />
        <text x={0} y={12} className="tick">{fmtCredits(max)}</text>
        <text x={0} y={H} className="tick">0</text>
        {days.map((d, i) => {
          let y = H;
          return (
            <g key={d.day}>
              <title>{`${d.day}: ${fmtCredits(d.credits)} credits`}</title>
              {models.map((m, j) => {
                const v = d.byModel[m] ?? 0;
                if (!v) return null;
                const h = (v / max) * (H - 10);
                y -= h;
                return <rect key={m} x={pad + i * bw + 1} y={y} width={Math.max(1, bw - 2)} height={h} fill={PALETTE[j % PALETTE.length]} />;
              })}
              {(i % Math.ceil(days.length / 6) === 0) && <text x={pad + i * bw} y={H + 14} className="tick">{d.day.slice(5)}</text>}
            </g>
          );
        })}
      </svg>
      <figcaption className="legend">
        {models.map((m, j) => (
          <span key={m}><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill={PALETTE[j % PALETTE.length]} /></svg> {m} ({fmtCredits(days.reduce((s, d) => s + (d.byModel[m] ?? 0), 0))})</span>
        ))}
      </figcaption>
    </figure>
  );
}

export function Account() {
  const [info, setInfo] = useState<AccountInfo | null>(null);
  const [days, setDays] = useState(30);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    api<AccountInfo>(`/api/v1/account?days=${days}&entries=100`).then(setInfo).catch(setError);
  }, [days]);
  return (
    <div className="page">
      <h1>Credits &amp; usage</h1>
      <ErrorBox error={error} />
      {info && (
        <>
          <div className="stats">
            <div className="card stat"><div className="muted">Balance</div><div className="big-number" data-testid="balance">{fmtCredits(info.credits)}</div><div className="muted small-text">credits</div></div>
            <div className="card stat"><div className="muted">Plan</div><div className="big-number">{info.plan}</div>
              {info.planLimits && <div className="muted small-text">{info.planLimits.requests_per_minute ? `${info.planLimits.requests_per_minute} req/min · ` : ""}{info.planLimits.executions_per_day ? `${info.planLimits.executions_per_day} runs/day · ` : ""}{String(info.planLimits.monthly_credits ?? 0)} credits/month</div>}
            </div>
            <div className="card stat"><div className="muted">Spent</div><div className="big-number">{fmtCredits(info.creditsSpent)}</div><div className="muted small-text">{fmtCredits(info.creditsHeld)} held by active runs</div></div>
            <div className="card stat"><div className="muted">Runs</div><div className="big-number">{info.executions?.total ?? 0}</div>
              <div className="muted small-text">{Object.entries(info.executions?.by_status ?? {}).map(([k, v]) => `${k} ${v}`).join(" · ")}</div></div>
          </div>
          <div className="card">
            <div className="page-head">
              <h2>Usage per day and model</h2>
              <div className="spacer" />
              <select value={days} onChange={(e) => setDays(Number(e.target.value))} aria-label="Period">
                <option value={7}>7 days</option>
                <option value={30}>30 days</option>
                <option value={90}>90 days</option>
              </select>
            </div>
            <UsageChart days={info.usageByDay} />
          </div>
          <ApiKeys />
          <div className="card">
            <h2>Ledger</h2>
            {info.ledger.length === 0 ? <Empty title="No ledger entries" /> : (
              <div className="table-wrap">
                <table className="list">
                  <thead><tr><th>When</th><th>Kind</th><th className="num">Amount</th><th>Run</th><th>Note</th></tr></thead>
                  <tbody>
                    {info.ledger.map((l) => (
                      <tr key={l.id}>
                        <td>{fmtTime(l.created_at)}</td>
                        <td>{l.kind}</td>
                        <td className={`num ${l.amount < 0 ? "neg" : "pos"}`}>{l.amount > 0 ? "+" : ""}{fmtCredits(l.amount)}</td>
                        <td>{l.execution_id ? <a href={`#/runs/${l.execution_id}`}>{shortId(l.execution_id)}</a> : ""}</td>
                        <td>{l.note ?? ""}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </div>
        </>
      )}
    </div>
  );
}

interface ApiKey {
  id: string;
  prefix: string;
  name: string;
  createdAt: number;
  lastUsedAt: number | null;
  current: boolean;
}

/** The account's keys: list, create (the secret shown once), revoke (after a confirmation). */
function ApiKeys() {
  const [keys, setKeys] = useState<ApiKey[] | null>(null);
  const [name, setName] = useState("");
  const [created, setCreated] = useState<(ApiKey & { key: string }) | null>(null);
  const [confirming, setConfirming] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const load = useCallback(async () => {
    try {
      setKeys((await api<{ data: ApiKey[] }>("/api/v1/account/keys")).data);
    } catch (e) {
      setError(e);
    }
  }, []);
  useEffect(() => {
    load();
  }, [load]);

  const create = async (ev: React.FormEvent) => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      setCreated(await api<ApiKey & { key: string }>("/api/v1/account/keys", { body: { name: name.trim() } }));
      setName("");
      await load();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  const revoke = async (k: ApiKey) => {
    setBusy(true);
    setError(null);
    try {
      await api(`/api/v1/account/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
      setConfirming(null);
      if (created?.id === k.id) setCreated(null);
      if (k.current) {
        // Studio's own key stops working now: back to the sign-in page
        session.clear();
        window.location.hash = "";
        window.location.reload();
        return;
      }
      await load();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="card" data-testid="api-keys">
      <h2>API keys</h2>
      <p className="muted">
        Keys of this account. A key is shown once, when it is created; the server keeps only its hash. Revoking a key stops it at once.
      </p>
      <ErrorBox error={error} />
      {created && (
        <div className="notice" role="status" data-testid="new-key">
          <strong>New key{created.name ? ` “${created.name}”` : ""}: copy it now, it will not be shown again.</strong>
          <div className="secret key-secret"><code data-testid="new-key-secret">{created.key}</code></div>
          <div className="actions">
            <CopyButton text={created.key} />
            <button className="secondary small" onClick={() => setCreated(null)}>I have saved it</button>
          </div>
        </div>
      )}
      {keys && keys.length > 0 && (
        <div className="table-wrap">
          <table className="list" data-testid="keys-table">
            <thead><tr><th>Name</th><th>Key</th><th>Created</th><th>Last used</th><th></th></tr></thead>
            <tbody>
              {keys.map((k) => (
                <tr key={k.id} data-testid={`key-${k.prefix}`}>
                  <td>{k.name || <span className="muted">unnamed</span>}{k.current && <> <span className="badge COMPLETED">this browser</span></>}</td>
                  <td><code>{k.prefix}…</code></td>
                  <td>{fmtTime(k.createdAt)}</td>
                  <td>{k.lastUsedAt ? fmtTime(k.lastUsedAt) : <span className="muted">never</span>}</td>
                  <td className="key-actions">
                    {confirming === k.id ? (
                      <span className="confirm" role="group" aria-label={`Revoke ${k.prefix}`}>
                        <span className="small-text">{k.current ? "Studio is signed in with this key: you will be signed out. Revoke?" : "It stops working at once. Revoke?"}</span>{" "}
                        <button className="danger small" onClick={() => revoke(k)} disabled={busy}>Revoke key</button>{" "}
                        <button className="secondary small" onClick={() => setConfirming(null)} disabled={busy}>Cancel</button>
                      </span>
                    ) : (
                      <button className="secondary small" onClick={() => setConfirming(k.id)}>Revoke…</button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <form className="form-inline" onSubmit={create}>
        <label>
          New key name
          <input name="keyName" value={name} maxLength={200} placeholder="e.g. ci runner" onChange={(e) => setName(e.target.value)} />
        </label>
        <button type="submit" disabled={busy}>Create key</button>
      </form>
    </div>
  );
}
