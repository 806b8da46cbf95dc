import { useEffect, useState } from "react";
import { api, fmtCredits, fmtTime, session } from "../api";
import { Empty, ErrorBox } from "../components/ErrorBox";

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
                        <td>{l.execution_id ? <a href={`#/runs/${l.execution_id}`}>{l.execution_id.slice(0, 8)}</a> : ""}</td>
                        <td>{l.note ?? ""}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </div>
          <div className="card">
            <h2>API keys</h2>
            <p className="muted">
              Keys are created and revoked by an administrator: on the server with <code>pixelmill keys create --account {info.name}</code> / <code>pixelmill keys revoke KEY_ID</code>
              {session.adminKey() ? <>, or on the <a href={`#/admin/${info.id}`}>admin page of this account</a></> : ", or on Studio's admin pages with an admin key"}.
            </p>
          </div>
        </>
      )}
    </div>
  );
}
