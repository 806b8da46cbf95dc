import { useCallback, useEffect, useRef, useState } from "react";
import { api, fmtTime } from "../api";
import { Empty, ErrorBox } from "../components/ErrorBox";
import { go } from "../App";
import type { WorkflowDoc } from "./Canvas";

interface Listed extends WorkflowDoc {
  id: string;
  version?: number;
  created_at?: number;
  updated_at?: number;
  createdAt?: number;
  updatedAt?: number;
}

const PAGE = 20;

export function Workflows() {
  const [items, setItems] = useState<Listed[] | null>(null);
  const [total, setTotal] = useState(0);
  const [offset, setOffset] = useState(0);
  const [error, setError] = useState<unknown>(null);
  const importRef = useRef<HTMLInputElement | null>(null);

  const load = useCallback(async () => {
    try {
      const r = await api<{ data: Listed[]; total: number }>(`/api/v1/workflows?limit=${PAGE}&offset=${offset}`);
      setItems(r.data);
      setTotal(r.total);
    } catch (e) {
      setError(e);
    }
  }, [offset]);
  useEffect(() => {
    load();
  }, [load]);

  const duplicate = async (w: Listed) => {
    try {
      const full = await api<Listed>(`/api/v1/workflows/${w.id}`);
      const body: WorkflowDoc = { name: `${full.name} (copy)`, nodes: full.nodes, description: full.description ?? undefined };
      if (full.inputs && Object.keys(full.inputs).length) body.inputs = full.inputs;
      await api("/api/v1/workflows", { body });
      load();
    } catch (e) {
      setError(e);
    }
  };
  const remove = async (w: Listed) => {
    if (!window.confirm(`Delete the workflow “${w.name}”?`)) return;
    try {
      await api(`/api/v1/workflows/${w.id}`, { method: "DELETE" });
      load();
    } catch (e) {
      setError(e);
    }
  };
  const importFile = async (file: File | undefined) => {
    if (!file) return;
    try {
      const doc = JSON.parse(await file.text());
      const created = await api<Listed>("/api/v1/workflows", { body: { name: doc.name || file.name.replace(/\.json$/, ""), nodes: doc.nodes, ...(doc.inputs ? { inputs: doc.inputs } : {}), ...(doc.description ? { description: doc.description } : {}) } });
      go(`workflows/${created.id}`);
    } catch (e) {
      setError(e instanceof SyntaxError ? new Error(`${file.name} is not JSON`) : e);
    }
  };

  return (
    <div className="page">
      <div className="page-head">
        <h1>Workflows</h1>
        <div className="spacer" />
        <button className="secondary" onClick={() => importRef.current?.click()}>Import JSON</button>
        <input ref={importRef} type="file" accept="application/json,.json" hidden onChange={(e) => importFile(e.target.files?.[0])} />
        <a className="button" href="#/workflows/new">New workflow</a>
      </div>
      <ErrorBox error={error} onDismiss={() => setError(null)} />
      {items && items.length === 0 && offset === 0 && (
        <Empty title="No workflows yet">A workflow is a graph of nodes (generate → upscale → remove background…). <a href="#/workflows/new">Create one</a>.</Empty>
      )}
      {items && items.length > 0 && (
        <div className="table-wrap">
          <table className="list">
            <thead>
              <tr><th>Name</th><th>Nodes</th><th>Updated</th><th /></tr>
            </thead>
            <tbody>
              {items.map((w) => (
                <tr key={w.id}>
                  <td><a href={`#/workflows/${w.id}`}>{w.name}</a>{w.description ? <div className="muted small-text">{w.description}</div> : null}</td>
                  <td>{Object.keys(w.nodes ?? {}).length}</td>
                  <td>{fmtTime((w.updatedAt ?? w.updated_at ?? w.createdAt ?? w.created_at) as number)}</td>
                  <td className="actions">
                    <a className="button secondary small" href={`#/workflows/${w.id}`}>Open</a>
                    <button className="secondary small" onClick={() => duplicate(w)}>Duplicate</button>
                    <button className="secondary small danger-text" onClick={() => remove(w)}>Delete</button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {total > PAGE && (
        <div className="pager">
          <button className="secondary small" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>Previous</button>
          <span className="muted">{offset + 1}–{Math.min(total, offset + PAGE)} of {total}</span>
          <button className="secondary small" disabled={offset + PAGE >= total} onClick={() => setOffset(offset + PAGE)}>Next</button>
        </div>
      )}
    </div>
  );
}
