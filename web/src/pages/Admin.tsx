import { useCallback, useEffect, useState } from "react";
import { api, fmtCredits, fmtTime } from "../api";
import { CopyButton, Empty, ErrorBox } from "../components/ErrorBox";
import { go } from "../App";

interface AdminAccount {
  id: string;
  name: string;
  plan: string;
  created_at: number;
  disabled_at: number | null;
  credits: number;
}
interface KeyRow {
  id: string;
  prefix: string;
  name: string;
  created_at: number;
  revoked_at: number | null;
  last_used_at?: number | null;
}

const PLANS = ["free", "starter", "pro", "enterprise"];
const admin = { auth: "admin" as const };

export function Admin({ accountId }: { accountId?: string }) {
  return accountId ? <AccountAdmin id={accountId} /> : <Accounts />;
}

function Accounts() {
  const [rows, setRows] = useState<AdminAccount[] | null>(null);
  const [usage, setUsage] = useState<Record<string, { spent: number; runs: number }>>({});
  const [error, setError] = useState<unknown>(null);
  const [name, setName] = useState("");
  const [plan, setPlan] = useState("free");
  const [credits, setCredits] = useState("");

  const load = useCallback(async () => {
    try {
      const r = await api<{ data: AdminAccount[] }>("/admin/v1/accounts?limit=200", admin);
      setRows(r.data);
      const u: Record<string, { spent: number; runs: number }> = {};
      await Promise.all(
        r.data.slice(0, 50).map(async (a) => {
          const x = await api<{ credits_spent: number; executions: { total: number } }>(`/admin/v1/accounts/${a.id}/usage?entries=0`, admin);
          u[a.id] = { spent: x.credits_spent, runs: x.executions.total };
        }),
      );
      setUsage(u);
    } catch (e) {
      setError(e);
    }
  }, []);
  useEffect(() => {
    load();
  }, [load]);

  const create = async (e: React.FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
      const body: Record<string, unknown> = { name: name.trim(), plan };
      if (credits !== "") body.credits = Number(credits);
      const a = await api<AdminAccount>("/admin/v1/accounts", { ...admin, body });
      setName("");
      setCredits("");
      go(`admin/${a.id}`);
    } catch (err) {
      setError(err);
    }
  };

  const totalSpent = Object.values(usage).reduce((s, u) => s + u.spent, 0);
  const totalRuns = Object.values(usage).reduce((s, u) => s + u.runs, 0);

  return (
    <div className="page">
      <h1>Admin · accounts</h1>
      <ErrorBox error={error} onDismiss={() => setError(null)} />
      <div className="stats">
        <div className="card stat"><div className="muted">Accounts</div><div className="big-number">{rows?.length ?? "…"}</div></div>
        <div className="card stat"><div className="muted">Runs (all accounts)</div><div className="big-number">{totalRuns}</div></div>
        <div className="card stat"><div className="muted">Credits spent (all)</div><div className="big-number">{fmtCredits(totalSpent)}</div></div>
      </div>
      <form className="card form-inline" onSubmit={create}>
        <h2>New account</h2>
        <label>Name <input value={name} onChange={(e) => setName(e.target.value)} required maxLength={200} /></label>
        <label>Plan <select value={plan} onChange={(e) => setPlan(e.target.value)}>{PLANS.map((p) => <option key={p}>{p}</option>)}</select></label>
        <label>Credits <input type="number" min={0} step="any" placeholder="plan default" value={credits} onChange={(e) => setCredits(e.target.value)} /></label>
        <button type="submit">Create</button>
      </form>
      {rows && rows.length === 0 && <Empty title="No accounts" />}
      {rows && rows.length > 0 && (
        <div className="table-wrap">
          <table className="list">
            <thead><tr><th>Name</th><th>Plan</th><th className="num">Credits</th><th className="num">Spent</th><th className="num">Runs</th><th>Created</th></tr></thead>
            <tbody>
              {rows.map((a) => (
                <tr key={a.id} className="clickable" onClick={() => go(`admin/${a.id}`)}>
                  <td><a href={`#/admin/${a.id}`} onClick={(e) => e.stopPropagation()}>{a.name}</a>{a.disabled_at ? <span className="badge FAILED">disabled</span> : null}</td>
                  <td>{a.plan}</td>
                  <td className="num">{fmtCredits(a.credits)}</td>
                  <td className="num">{usage[a.id] ? fmtCredits(usage[a.id].spent) : "…"}</td>
                  <td className="num">{usage[a.id]?.runs ?? "…"}</td>
                  <td>{fmtTime(a.created_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}

function AccountAdmin({ id }: { id: string }) {
  const [acct, setAcct] = useState<AdminAccount | null>(null);
  const [keys, setKeys] = useState<KeyRow[]>([]);
  const [usage, setUsage] = useState<any>(null);
  const [error, setError] = useState<unknown>(null);
  const [newKey, setNewKey] = useState<string | null>(null);
  const [keyName, setKeyName] = useState("");
  const [grant, setGrant] = useState("");
  const [note, setNote] = useState("");

  const load = useCallback(async () => {
    try {
      const [a, k, u] = await Promise.all([
        api<AdminAccount>(`/admin/v1/accounts/${id}`, admin),
        api<{ data: KeyRow[] }>(`/admin/v1/accounts/${id}/keys`, admin),
        api(`/admin/v1/accounts/${id}/usage?entries=50`, admin),
      ]);
      setAcct(a);
      setKeys(k.data);
      setUsage(u);
    } catch (e) {
      setError(e);
    }
  }, [id]);
  useEffect(() => {
    load();
  }, [load]);

  const setPlan = async (plan: string) => {
    try {
      setAcct(await api<AdminAccount>(`/admin/v1/accounts/${id}/plan`, { ...admin, method: "PUT", body: { plan } }));
    } catch (e) {
      setError(e);
    }
  };
  const createKey = async (e: React.FormEvent) => {
    e.preventDefault();
    try {
      const r = await api<{ key: string }>(`/admin/v1/accounts/${id}/keys`, { ...admin, body: { name: keyName } });
      setNewKey(r.key);
      setKeyName("");
      load();
    } catch (err) {
      setError(err);
    }
  };
  const revoke = async (keyId: string) => {
    if (!window.confirm("Revoke this key? Clients using it stop working at once.")) return;
    try {
      await api(`/admin/v1/keys/${keyId}`, { ...admin, method: "DELETE" });
      load();
    } catch (e) {
      setError(e);
    }
  };
  const doGrant = async (e: React.FormEvent) => {
    e.preventDefault();
    try {
      await api(`/admin/v1/accounts/${id}/credits`, { ...admin, body: { amount: Number(grant), note: note || undefined } });
      setGrant("");
      setNote("");
      load();
    } catch (err) {
      setError(err);
    }
  };

  return (
    <div className="page">
      <div className="page-head">
        <a className="button secondary small" href="#/admin">← Accounts</a>
        <h1>{acct?.name ?? "Account"}</h1>
      </div>
      <ErrorBox error={error} onDismiss={() => setError(null)} />
      {acct && (
        <>
          <div className="stats">
            <div className="card stat"><div className="muted">Credits</div><div className="big-number">{fmtCredits(acct.credits)}</div></div>
            <div className="card stat"><div className="muted">Plan</div>
              <select value={acct.plan} onChange={(e) => setPlan(e.target.value)} aria-label="Plan">
                {Array.from(new Set([...PLANS, acct.plan])).map((p) => <option key={p}>{p}</option>)}
              </select>
            </div>
            {usage && <div className="card stat"><div className="muted">Spent</div><div className="big-number">{fmtCredits(usage.credits_spent)}</div><div className="muted small-text">{usage.executions.total} runs</div></div>}
          </div>
          <div className="cards-2">
            <form className="card" onSubmit={doGrant}>
              <h2>Grant credits</h2>
              <label>Amount <input type="number" min={0.0001} step="any" value={grant} onChange={(e) => setGrant(e.target.value)} required /></label>
              <label>Note <input value={note} onChange={(e) => setNote(e.target.value)} maxLength={500} /></label>
              <button type="submit">Grant</button>
            </form>
            <div className="card">
              <h2>Keys</h2>
              {newKey && (
                <div className="notice" role="status">
                  New key (shown once): <code data-testid="new-key">{newKey}</code> <CopyButton text={newKey} />
                </div>
              )}
              <form className="form-inline" onSubmit={createKey}>
                <label>Name <input value={keyName} onChange={(e) => setKeyName(e.target.value)} maxLength={200} /></label>
                <button type="submit">Create key</button>
              </form>
              {keys.length === 0 ? <Empty title="No keys" /> : (
                <table className="list">
                  <thead><tr><th>Key</th><th>Name</th><th>Created</th><th /></tr></thead>
                  <tbody>
                    {keys.map((k) => (
                      <tr key={k.id}>
                        <td><code>{k.prefix}…</code></td>
                        <td>{k.name}</td>
                        <td>{fmtTime(k.created_at)}</td>
                        <td>{k.revoked_at ? <span className="muted">revoked</span> : <button className="secondary small danger-text" onClick={() => revoke(k.id)}>Revoke</button>}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              )}
            </div>
          </div>
          {usage?.ledger?.length > 0 && (
            <div className="card">
              <h2>Ledger</h2>
              <div className="table-wrap">
                <table className="list">
                  <thead><tr><th>When</th><th>Kind</th><th className="num">Amount</th><th>Note</th></tr></thead>
                  <tbody>
                    {usage.ledger.map((l: any) => (
                      <tr key={l.id}><td>{fmtTime(l.created_at)}</td><td>{l.kind}</td><td className="num">{fmtCredits(l.amount)}</td><td>{l.note ?? ""}</td></tr>
                    ))}
                  </tbody>
                </table>
              </div>
            </div>
          )}
        </>
      )}
    </div>
  );
}
