import { useCallback, useEffect, useState } from "react";
import { api, Execution, ExecutionGraph, fmtCredits, fmtMs, fmtTime, streamEvents, TERMINAL, shortId } from "../api";
import { Empty, ErrorBox } from "../components/ErrorBox";
import { go, refreshCredits } from "../App";

const STATUSES = ["", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"];
const PAGE = 20;

export function Runs({ executionId }: { executionId?: string }) {
  return executionId ? <RunDetail id={executionId} /> : <RunList />;
}

function StatusBadge({ status }: { status: string }) {
  return <span className={`badge ${status}`}>{status.toLowerCase()}</span>;
}

function RunList() {
  const [status, setStatus] = useState("");
  const [pages, setPages] = useState<(number | null)[]>([null]); // cursors of the pages seen
  const [page, setPage] = useState(0);
  const [data, setData] = useState<{ data: Execution[]; hasMore: boolean; nextCursor: number | null } | null>(null);
  const [error, setError] = useState<unknown>(null);

  const load = useCallback(async () => {
    const cursor = pages[page];
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (cursor !== null) q.set("before", String(cursor));
    if (status) q.set("status", status);
    try {
      setData(await api(`/api/v1/executions?${q}`));
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [pages, page, status]);

  useEffect(() => {
    load();
  }, [load]);
  useEffect(() => {
    // keep a page with unfinished runs fresh
    if (!data?.data.some((e) => !TERMINAL.has(e.status))) return;
    const t = setTimeout(load, 2000);
    return () => clearTimeout(t);
  }, [data, load]);

  const next = () => {
    if (!data?.nextCursor) return;
    setPages((p) => [...p.slice(0, page + 1), data.nextCursor]);
    setPage(page + 1);
  };

  return (
    <div className="page">
      <div className="page-head">
        <h1>Runs</h1>
        <div className="spacer" />
        <label className="inline">
          Status{" "}
          <select value={status} onChange={(e) => { setStatus(e.target.value); setPages([null]); setPage(0); }} aria-label="Filter by status">
            {STATUSES.map((s) => <option key={s} value={s}>{s ? s.toLowerCase() : "all"}</option>)}
          </select>
        </label>
        <button className="secondary small" onClick={load}>Refresh</button>
      </div>
      <ErrorBox error={error} />
      {data && data.data.length === 0 && (
        <Empty title={status ? `No ${status.toLowerCase()} runs` : "No runs yet"}>
          Runs appear here when you generate in the <a href="#/playground">playground</a>, run a <a href="#/workflows">workflow</a>, or call the API.
        </Empty>
      )}
      {data && data.data.length > 0 && (
        <div className="table-wrap">
          <table className="list" data-testid="runs-table">
            <thead>
              <tr><th>Run</th><th>Status</th><th>Nodes</th><th>Created</th><th>Duration</th><th className="num">Credits</th><th>Output</th></tr>
            </thead>
            <tbody>
              {data.data.map((e) => (
                <tr key={e.id} className="clickable" onClick={() => go(`runs/${e.id}`)}>
                  <td><a href={`#/runs/${e.id}`} onClick={(ev) => ev.stopPropagation()}><code>{shortId(e.id)}</code></a></td>
                  <td><StatusBadge status={e.status} />{!TERMINAL.has(e.status) && ` ${Math.round(e.progress * 100)}%`}</td>
                  <td>{e.nodeRuns.map((n) => n.type).join(" → ")}</td>
                  <td>{fmtTime(e.createdAt)}</td>
                  <td>{fmtMs(e.durationMs)}</td>
                  <td className="num">{fmtCredits(e.credits.charged ?? e.credits.estimated)}</td>
                  <td>{e.outputs[0] ? <img className="thumb" src={e.outputs[0]} alt="" /> : null}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <div className="pager">
        <button className="secondary small" disabled={page === 0} onClick={() => setPage(page - 1)}>Newer</button>
        <span className="muted">page {page + 1}</span>
        <button className="secondary small" disabled={!data?.hasMore} onClick={next}>Older</button>
      </div>
    </div>
  );
}

function RunDetail({ id }: { id: string }) {
  const [ex, setEx] = useState<Execution | null>(null);
  const [error, setError] = useState<unknown>(null);

  const load = useCallback(async () => {
    try {
      setEx(await api<Execution>(`/api/v1/executions/${encodeURIComponent(id)}`));
    } catch (e) {
      setError(e);
    }
  }, [id]);

  useEffect(() => {
    load();
  }, [load]);

  const live = !!ex && !TERMINAL.has(ex.status);
  useEffect(() => {
    if (!live) return;
    const ctl = new AbortController();
    let timer: ReturnType<typeof setTimeout> | null = null;
    const soon = () => {
      if (timer) return;
      timer = setTimeout(() => { timer = null; load(); }, 300);
    };
    streamEvents(id, () => soon(), ctl.signal)
      .then(() => { load(); refreshCredits(); })
      .catch(setError);
    return () => { ctl.abort(); if (timer) clearTimeout(timer); };
  }, [id, live, load]);

  const cancel = async () => {
    try {
      setEx(await api<Execution>(`/api/v1/executions/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
    } catch (e) {
      setError(e);
    }
  };
  const [busy, setBusy] = useState<"" | "rerun" | "canvas">("");
  const graphOf = async (): Promise<ExecutionGraph> =>
    (await api<Execution & { graph: ExecutionGraph }>(`/api/v1/executions/${encodeURIComponent(id)}?include=graph`)).graph;
  // the exact graph this run ran (whichever API submitted it), submitted again as an ad-hoc graph
  const rerun = async () => {
    setBusy("rerun");
    setError(null);
    try {
      const graph = await graphOf();
      const r = await api<Execution>("/api/v1/executions", { body: { nodes: graph.nodes, label: `Re-run of ${shortId(id)}` } });
      refreshCredits();
      go(`runs/${r.id}`);
    } catch (e) {
      setError(e);
    } finally {
      setBusy("");
    }
  };
  const openInCanvas = async () => {
    setBusy("canvas");
    setError(null);
    try {
      const graph = await graphOf();
      sessionStorage.setItem("pixelmill.canvasDraft", JSON.stringify({ name: `Run ${shortId(id)}`, nodes: graph.nodes }));
      go("workflows/new");
    } catch (e) {
      setError(e instanceof DOMException ? new Error("This run's graph is too large to open in the canvas (its input images do not fit the tab's storage).") : e);
    } finally {
      setBusy("");
    }
  };

  return (
    <div className="page">
      <div className="page-head">
        <a href="#/runs" className="button secondary small">← Runs</a>
        <h1>Run <code>{shortId(id)}</code></h1>
        <div className="spacer" />
        {live && <button className="danger small" onClick={cancel}>Cancel</button>}
        {ex?.workflowId && <a className="button secondary small" href={`#/workflows/${ex.workflowId}`}>Open workflow</a>}
        <button className="secondary small" onClick={openInCanvas} disabled={!ex || !!busy} title="Open this run's graph as a new workflow in the canvas">{busy === "canvas" ? "Opening…" : "Open in canvas"}</button>
        <button className="small" onClick={rerun} disabled={!ex || !!busy} data-testid="rerun" title={ex ? `Run the same graph again (about ${fmtCredits(ex.credits.estimated)} credits)` : undefined}>{busy === "rerun" ? "Submitting…" : "Re-run"}</button>
      </div>
      <ErrorBox error={error} />
      {ex && (
        <>
          <div className="card summary" data-testid="run-detail" data-status={ex.status}>
            <div><StatusBadge status={ex.status} /> {Math.round(ex.progress * 100)}%{ex.status === "QUEUED" && ex.queuePosition !== null ? ` · position ${ex.queuePosition + 1} in the queue` : ""}</div>
            <div>Created {fmtTime(ex.createdAt)} · duration {fmtMs(ex.durationMs)}</div>
            <div>Credits: estimated {fmtCredits(ex.credits.estimated)}, charged {fmtCredits(ex.credits.charged)}</div>
            {ex.error && <div className="error">{ex.error.code}: {ex.error.message}</div>}
            {ex.inputs && Object.keys(ex.inputs).length > 0 && <pre>{JSON.stringify(ex.inputs, null, 2)}</pre>}
            <div className="muted small-text">id {ex.id}{ex.batchId ? ` · batch ${ex.batchId}` : ""}</div>
          </div>
          <div className="table-wrap">
            <table className="list">
              <thead>
                <tr><th>Node</th><th>Type</th><th>Status</th><th>Duration</th><th className="num">Credits</th><th>Seed</th><th>Outputs</th></tr>
              </thead>
              <tbody>
                {ex.nodeRuns.map((n) => (
                  <tr key={n.nodeId} data-testid={`noderun-${n.nodeId}`}>
                    <td>{n.nodeId}</td>
                    <td>{n.type}</td>
                    <td>
                      <StatusBadge status={n.status} />
                      {n.status === "RUNNING" && ` ${Math.round(n.progress * 100)}%`}
                      {n.cached && <span className="muted"> (cached)</span>}
                      {n.error && <div className="field-error">{n.error.message}</div>}
                    </td>
                    <td>{fmtMs(n.durationMs)}</td>
                    <td className="num">{fmtCredits(n.status === "COMPLETED" ? n.credits : n.estimatedCredits)}</td>
                    <td>{n.seed ?? "–"}</td>
                    <td className="outputs">
                      {n.outputs.map((o) => (
                        <a key={o.url} href={o.url} target="_blank" rel="noreferrer"><img className="thumb" src={o.url} alt={`${n.nodeId} output`} /></a>
                      ))}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
    </div>
  );
}
