import { memo, useCallback, useEffect, useMemo, useRef, useState } from "react";
import {
  addEdge,
  applyEdgeChanges,
  applyNodeChanges,
  Background,
  Controls,
  Handle,
  MiniMap,
  Position,
  ReactFlow,
  ReactFlowProvider,
  useReactFlow,
  type Connection,
  type Edge,
  type EdgeChange,
  type Node,
  type NodeChange,
  type NodeProps,
} from "@xyflow/react";
import { api, ApiError, Execution, fmtCredits, fmtMs, ModelInfo, NodeRun, NodeTypeInfo, origin, Problem, streamEvents, TERMINAL, shortId } from "../api";
import { CopyButton, ErrorBox } from "../components/ErrorBox";
import { defaultParams, SchemaForm } from "../components/SchemaForm";

interface InputDecl {
  type: string;
  default?: unknown;
  required?: boolean;
  description?: string | null;
}

function parseValue(type: string, raw: string): unknown {
  if (type === "integer") return Math.trunc(Number(raw));
  if (type === "number") return Number(raw);
  if (type === "boolean") return raw === "true" || raw === "1" || raw === "yes";
  return raw;
}
import { go, refreshCredits } from "../App";
import { useDebounced } from "../hooks";

interface PmData extends Record<string, unknown> {
  nodeType: string;
  params: Record<string, unknown>;
}
type PmNode = Node<PmData, "pm">;

interface Display extends PmData {
  info?: NodeTypeInfo;
  problems: Problem[];
  price: number | null;
  run: Partial<NodeRun> | null;
}

export interface WorkflowDoc {
  id?: string;
  name: string;
  description?: string | null;
  inputs?: Record<string, unknown>;
  nodes: Record<string, { type: string; params?: Record<string, unknown>; inputs?: Record<string, [string, string]>; ui?: { x: number; y: number } }>;
  webhook_url?: string | null;
}

const SHORT: Record<string, string> = { text_to_image: "generate", remove_background: "cutout", load_image: "image" };

// --- the node on the canvas ------------------------------------------------------------

const NodeView = memo(function NodeView({ id, data, selected }: NodeProps<Node<Display, "pm">>) {
  const info = data.info;
  const run = data.run;
  const inputs = Object.entries(info?.inputs ?? {});
  const outputs = Object.entries(info?.outputs ?? {});
  const status = run?.status ?? (data.problems.length ? "INVALID" : "IDLE");
  const inputProblem = (name: string) => data.problems.find((p) => p.loc?.[0] === "inputs" && p.loc?.[1] === name);
  return (
    <div className={`pm-node status-${status} ${selected ? "selected" : ""}`} data-testid={`node-${id}`} data-status={status}>
      <div className="pm-node-head">
        <span className="pm-node-type">{data.nodeType}</span>
        <span className="pm-node-id">{id}</span>
      </div>
      <div className="pm-node-ports">
        <div className="pm-inputs">
          {inputs.map(([name, spec]) => (
            <div key={name} className={`port in ${inputProblem(name) ? "bad" : ""}`} title={inputProblem(name)?.msg ?? `${spec.type}${spec.required ? " (required)" : ""}`}>
              <Handle type="target" position={Position.Left} id={name} className={`handle-${spec.type}`} />
              <span>{name}{spec.required ? "*" : ""}</span>
            </div>
          ))}
        </div>
        <div className="pm-outputs">
          {outputs.map(([name, type]) => (
            <div key={name} className="port out" title={type}>
              <span>{name}</span>
              <Handle type="source" position={Position.Right} id={name} className={`handle-${type}`} />
            </div>
          ))}
        </div>
      </div>
      <div className="pm-node-foot">
        <span className={`badge ${status}`}>{status === "IDLE" ? "ready" : status.toLowerCase()}</span>
        {run?.status === "RUNNING" && <span>{Math.round((run.progress ?? 0) * 100)}%</span>}
        {run?.durationMs != null && <span>{fmtMs(run.durationMs)}</span>}
        {run?.cached && <span title="Reused a cached output">cached</span>}
        <span className="spacer" />
        <span className="price" title="Price of this node">
          {run && run.status === "COMPLETED" ? fmtCredits(run.credits ?? 0) : data.price !== null ? `≈${fmtCredits(data.price)}` : ""} cr
        </span>
      </div>
      {run?.status === "RUNNING" && (
        <div className="progress thin"><div style={{ width: `${Math.round((run.progress ?? 0) * 100)}%` }} /></div>
      )}
      {data.problems.length > 0 && (
        <ul className="pm-node-problems" data-testid={`problems-${id}`}>
          {data.problems.slice(0, 3).map((p, i) => <li key={i}>{p.loc?.length ? `${p.loc.join(".")}: ` : ""}{p.msg}</li>)}
        </ul>
      )}
      {run?.error && <div className="pm-node-problems">{run.error.message}</div>}
      {run?.outputs && run.outputs.length > 0 && (
        <div className="pm-thumbs" data-testid={`outputs-${id}`}>
          {run.outputs.slice(0, 4).map((o) => (
            <a key={o.url} href={o.url} target="_blank" rel="noreferrer" className="nodrag">
              <img src={o.url} alt={`${id} output`} />
            </a>
          ))}
        </div>
      )}
    </div>
  );
});

const nodeTypes = { pm: NodeView };

// --- helpers ------------------------------------------------------------------------------

function toDoc(name: string, base: WorkflowDoc | null, nodes: PmNode[], edges: Edge[]): WorkflowDoc {
  const out: WorkflowDoc["nodes"] = {};
  for (const n of nodes) {
    const params: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(n.data.params)) if (v !== undefined) params[k] = v;
    out[n.id] = { type: n.data.nodeType, params, ui: { x: Math.round(n.position.x), y: Math.round(n.position.y) } };
  }
  for (const e of edges) {
    const t = out[e.target];
    if (!t || !e.targetHandle || !e.sourceHandle) continue;
    t.inputs = { ...(t.inputs ?? {}), [e.targetHandle]: [e.source, e.sourceHandle] };
  }
  const doc: WorkflowDoc = { name: name || "Untitled workflow", nodes: out };
  if (base?.description) doc.description = base.description;
  if (base?.inputs && Object.keys(base.inputs).length) doc.inputs = base.inputs;
  if (base?.webhook_url) doc.webhook_url = base.webhook_url;
  return doc;
}

function fromDoc(doc: WorkflowDoc): { nodes: PmNode[]; edges: Edge[] } {
  const ids = Object.keys(doc.nodes ?? {});
  // a layout for nodes without a saved position: columns by depth
  const depth: Record<string, number> = {};
  const d = (id: string, seen = new Set<string>()): number => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const ins = Object.values(doc.nodes[id]?.inputs ?? {});
    depth[id] = ins.length ? 1 + Math.max(...ins.map(([src]) => (doc.nodes[src] ? d(src, seen) : 0))) : 0;
    return depth[id];
  };
  const rows: Record<number, number> = {};
  const nodes: PmNode[] = ids.map((id) => {
    const spec = doc.nodes[id];
    const col = d(id);
    const row = (rows[col] = (rows[col] ?? -1) + 1);
    return {
      id,
      type: "pm",
      position: spec.ui ? { x: spec.ui.x, y: spec.ui.y } : { x: 40 + col * 300, y: 40 + row * 220 },
      data: { nodeType: spec.type, params: { ...(spec.params ?? {}) } },
    };
  });
  const edges: Edge[] = [];
  for (const id of ids) {
    for (const [input, link] of Object.entries(doc.nodes[id].inputs ?? {})) {
      if (!Array.isArray(link)) continue;
      edges.push(edgeFor(link[0], link[1], id, input));
    }
  }
  return { nodes, edges };
}

function edgeFor(source: string, sourceHandle: string, target: string, targetHandle: string): Edge {
  return { id: `${source}.${sourceHandle}->${target}.${targetHandle}`, source, sourceHandle, target, targetHandle };
}

function reaches(edges: Edge[], from: string, to: string): boolean {
  const seen = new Set<string>();
  const stack = [from];
  while (stack.length) {
    const n = stack.pop()!;
    if (n === to) return true;
    if (seen.has(n)) continue;
    seen.add(n);
    for (const e of edges) if (e.source === n) stack.push(e.target);
  }
  return false;
}

type Snapshot = { nodes: PmNode[]; edges: Edge[] };

// --- the editor ------------------------------------------------------------------------------

export function Canvas({ workflowId }: { workflowId: string }) {
  return (
    <ReactFlowProvider>
      <Editor key={workflowId} workflowId={workflowId} />
    </ReactFlowProvider>
  );
}

function Editor({ workflowId }: { workflowId: string }) {
  const isNew = workflowId === "new";
  const [types, setTypes] = useState<NodeTypeInfo[]>([]);
  const [models, setModels] = useState<ModelInfo[]>([]);
  const [doc, setDoc] = useState<WorkflowDoc | null>(null);
  const [name, setName] = useState("Untitled workflow");
  const [nodes, setNodes] = useState<PmNode[]>([]);
  const [edges, setEdges] = useState<Edge[]>([]);
  const [selectedId, setSelectedId] = useState<string | null>(null);
  const [problems, setProblems] = useState<Problem[]>([]);
  const [prices, setPrices] = useState<Record<string, number>>({});
  const [total, setTotal] = useState<number | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [saving, setSaving] = useState(false);
  const [dirty, setDirty] = useState(false);
  const [execution, setExecution] = useState<Execution | null>(null);
  const [runs, setRuns] = useState<Record<string, Partial<NodeRun>>>({});
  const [published, setPublished] = useState<{ url: string; response?: string } | null>(null);
  const [loaded, setLoaded] = useState(false);
  const [batchOpen, setBatchOpen] = useState(false);
  const [rows, setRows] = useState<Record<string, string>[]>([{}]);
  const [batchRuns, setBatchRuns] = useState<Execution[] | null>(null);
  const history = useRef<{ past: Snapshot[]; future: Snapshot[] }>({ past: [], future: [] });
  const lastParamEdit = useRef<{ key: string; at: number } | null>(null);
  const streamCtl = useRef<AbortController | null>(null);
  const importRef = useRef<HTMLInputElement | null>(null);
  const flow = useReactFlow();

  // load node types, models, and the workflow (or a draft sent from the playground)
  useEffect(() => {
    let cancelled = false;
    (async () => {
      try {
        const [t, m] = await Promise.all([
          api<{ data: NodeTypeInfo[] }>("/api/v1/nodes"),
          api<{ data: ModelInfo[] }>("/api/v1/models"),
        ]);
        if (cancelled) return;
        setTypes(t.data);
        setModels(m.data);
        let d: WorkflowDoc | null = null;
        if (!isNew) d = await api<WorkflowDoc>(`/api/v1/workflows/${encodeURIComponent(workflowId)}`);
        else {
          const draft = sessionStorage.getItem("pixelmill.canvasDraft");
          if (draft) {
            sessionStorage.removeItem("pixelmill.canvasDraft");
            d = JSON.parse(draft);
            setDirty(true);
          }
        }
        if (cancelled) return;
        if (d) {
          setDoc(d);
          setName(d.name);
          const g = fromDoc(d);
          setNodes(g.nodes);
          setEdges(g.edges);
          setTimeout(() => flow.fitView({ padding: 0.25, maxZoom: 1 }), 60);
        }
        setLoaded(true);
      } catch (e) {
        setError(e);
      }
    })();
    return () => {
      cancelled = true;
      streamCtl.current?.abort();
    };
  }, [workflowId, isNew]);

  const typeInfo = useMemo(() => Object.fromEntries(types.map((t) => [t.type, t])), [types]);

  // --- history -------------------------------------------------------------------------
  const snapshot = useCallback(() => {
    history.current.past.push({ nodes, edges });
    if (history.current.past.length > 100) history.current.past.shift();
    history.current.future = [];
  }, [nodes, edges]);

  const undo = useCallback(() => {
    const prev = history.current.past.pop();
    if (!prev) return;
    history.current.future.push({ nodes, edges });
    setNodes(prev.nodes);
    setEdges(prev.edges);
    setDirty(true);
  }, [nodes, edges]);

  const redo = useCallback(() => {
    const next = history.current.future.pop();
    if (!next) return;
    history.current.past.push({ nodes, edges });
    setNodes(next.nodes);
    setEdges(next.edges);
    setDirty(true);
  }, [nodes, edges]);

  useEffect(() => {
    const on = (e: KeyboardEvent) => {
      const tag = (e.target as HTMLElement)?.tagName;
      if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") return;
      if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") {
        e.preventDefault();
        if (e.shiftKey) redo();
        else undo();
      } else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "y") {
        e.preventDefault();
        redo();
      }
    };
    window.addEventListener("keydown", on);
    return () => window.removeEventListener("keydown", on);
  }, [undo, redo]);

  // --- editing ---------------------------------------------------------------------------
  const onNodesChange = useCallback(
    (changes: NodeChange<PmNode>[]) => {
      if (changes.some((c) => c.type === "remove")) snapshot();
      if (changes.some((c) => c.type === "remove" || (c.type === "position" && !c.dragging))) setDirty(true);
      setNodes((ns) => applyNodeChanges(changes, ns));
    },
    [snapshot],
  );
  const onEdgesChange = useCallback(
    (changes: EdgeChange[]) => {
      if (changes.some((c) => c.type === "remove")) {
        snapshot();
        setDirty(true);
      }
      setEdges((es) => applyEdgeChanges(changes, es));
    },
    [snapshot],
  );
  const onNodeDragStart = useCallback(() => snapshot(), [snapshot]);

  const isValidConnection = useCallback(
    (c: Connection | Edge) => {
      if (!c.source || !c.target || c.source === c.target || !c.sourceHandle || !c.targetHandle) return false;
      const src = nodes.find((n) => n.id === c.source);
      const dst = nodes.find((n) => n.id === c.target);
      const outType = src && typeInfo[src.data.nodeType]?.outputs[c.sourceHandle];
      const inType = dst && typeInfo[dst.data.nodeType]?.inputs[c.targetHandle]?.type;
      if (!outType || !inType || outType !== inType) return false;
      return !reaches(edges, c.target, c.source); // no cycles
    },
    [nodes, edges, typeInfo],
  );

  const onConnect = useCallback(
    (c: Connection) => {
      if (!isValidConnection(c)) return;
      snapshot();
      setDirty(true);
      setEdges((es) => addEdge(edgeFor(c.source, c.sourceHandle!, c.target, c.targetHandle!), es.filter((e) => !(e.target === c.target && e.targetHandle === c.targetHandle))));
    },
    [isValidConnection, snapshot],
  );

  const addNode = useCallback(
    (type: string, position?: { x: number; y: number }) => {
      const info = typeInfo[type];
      if (!info) return;
      snapshot();
      const base = SHORT[type] ?? type;
      let id = base;
      for (let i = 2; nodes.some((n) => n.id === id); i++) id = `${base}${i}`;
      const pos = position ?? (() => {
        const maxX = nodes.reduce((m, n) => Math.max(m, n.position.x), -260);
        return { x: maxX + 300, y: 60 };
      })();
      const node: PmNode = { id, type: "pm", position: pos, data: { nodeType: type, params: defaultParams(info.params, models) } };
      setNodes((ns) => [...ns.map((n) => ({ ...n, selected: false })), { ...node, selected: true }]);
      // wire it after the last node with a compatible output, when its first input is free
      const firstInput = Object.entries(info.inputs)[0];
      if (firstInput) {
        const prev = [...nodes].reverse().find((n) => Object.values(typeInfo[n.data.nodeType]?.outputs ?? {}).includes(firstInput[1].type));
        if (prev) {
          const out = Object.entries(typeInfo[prev.data.nodeType].outputs).find(([, t]) => t === firstInput[1].type)![0];
          setEdges((es) => [...es, edgeFor(prev.id, out, id, firstInput[0])]);
        }
      }
      setSelectedId(id);
      setDirty(true);
    },
    [typeInfo, nodes, models, snapshot],
  );

  const setParam = useCallback(
    (nodeId: string, field: string, value: unknown) => {
      const key = `${nodeId}.${field}`;
      const now = Date.now();
      if (!lastParamEdit.current || lastParamEdit.current.key !== key || now - lastParamEdit.current.at > 1500) snapshot();
      lastParamEdit.current = { key, at: now };
      setDirty(true);
      setNodes((ns) => ns.map((n) => (n.id === nodeId ? { ...n, data: { ...n.data, params: { ...n.data.params, [field]: value } } } : n)));
    },
    [snapshot],
  );

  const renameNode = (oldId: string, newId: string) => {
    newId = newId.trim().replace(/[^A-Za-z0-9_-]/g, "_");
    if (!newId || newId === oldId || nodes.some((n) => n.id === newId)) return;
    snapshot();
    setNodes((ns) => ns.map((n) => (n.id === oldId ? { ...n, id: newId } : n)));
    setEdges((es) =>
      es.map((e) => {
        const s = e.source === oldId ? newId : e.source;
        const t = e.target === oldId ? newId : e.target;
        return edgeFor(s, e.sourceHandle!, t, e.targetHandle!);
      }),
    );
    setSelectedId(newId);
    setDirty(true);
  };

  const deleteNode = (id: string) => {
    snapshot();
    setNodes((ns) => ns.filter((n) => n.id !== id));
    setEdges((es) => es.filter((e) => e.source !== id && e.target !== id));
    setSelectedId(null);
    setDirty(true);
  };

  // --- validation + price (debounced) ---------------------------------------------------------
  const currentDoc = useMemo(() => toDoc(name, doc, nodes, edges), [name, doc, nodes, edges]);
  const docForCheck = useDebounced(currentDoc, 400);
  useEffect(() => {
    if (!loaded || !Object.keys(docForCheck.nodes).length) {
      setProblems([]);
      setPrices({});
      setTotal(null);
      return;
    }
    const ctl = new AbortController();
    api<{ estimatedCredits: number; breakdown: { nodeId: string; credits: number }[] }>("/api/v1/workflows/validate", { body: docForCheck, signal: ctl.signal })
      .then((r) => {
        setProblems([]);
        setPrices(Object.fromEntries(r.breakdown.map((b) => [b.nodeId, b.credits])));
        setTotal(r.estimatedCredits);
      })
      .catch((e) => {
        if ((e as Error).name === "AbortError") return;
        if (e instanceof ApiError && e.problems.length) {
          setProblems(e.problems);
          setTotal(null);
        } else setError(e);
      });
    return () => ctl.abort();
  }, [docForCheck, loaded]);

  const displayNodes = useMemo(
    () =>
      nodes.map((n) => ({
        ...n,
        data: {
          ...n.data,
          info: typeInfo[n.data.nodeType],
          problems: problems.filter((p) => p.node === n.id),
          price: prices[n.id] ?? null,
          run: runs[n.id] ?? null,
        } as Display,
      })),
    [nodes, typeInfo, problems, prices, runs],
  );
  const graphProblems = problems.filter((p) => !p.node || !nodes.some((n) => n.id === p.node));

  // --- save, duplicate, delete, import/export ------------------------------------------------
  const save = async (asNew = false): Promise<string | null> => {
    setSaving(true);
    setError(null);
    try {
      const body = toDoc(asNew ? `${name} (copy)` : name, doc, nodes, edges);
      let saved: WorkflowDoc;
      if (isNew || asNew) saved = await api<WorkflowDoc>("/api/v1/workflows", { body });
      else saved = await api<WorkflowDoc>(`/api/v1/workflows/${encodeURIComponent(workflowId)}`, { method: "PUT", body });
      setDirty(false);
      if (isNew || asNew) {
        go(`workflows/${saved.id}`);
        return saved.id!;
      }
      setDoc(saved);
      return saved.id!;
    } catch (e) {
      setError(e);
      return null;
    } finally {
      setSaving(false);
    }
  };

  const remove = async () => {
    if (isNew) return go("workflows");
    if (!window.confirm(`Delete the workflow “${name}”?`)) return;
    try {
      await api(`/api/v1/workflows/${encodeURIComponent(workflowId)}`, { method: "DELETE" });
      go("workflows");
    } catch (e) {
      setError(e);
    }
  };

  const exportJson = () => {
    const blob = new Blob([JSON.stringify(currentDoc, null, 2)], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `${(name || "workflow").replace(/[^A-Za-z0-9_-]+/g, "-")}.json`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  };

  const importJson = (file: File | undefined) => {
    if (!file) return;
    file.text().then((text) => {
      try {
        const d = JSON.parse(text) as WorkflowDoc;
        if (!d || typeof d !== "object" || typeof d.nodes !== "object") throw new Error("The file has no “nodes” object.");
        snapshot();
        const g = fromDoc(d);
        setNodes(g.nodes);
        setEdges(g.edges);
        if (d.name) setName(d.name);
        setDoc({ ...d });
        setDirty(true);
        setTimeout(() => flow.fitView({ padding: 0.2 }), 50);
      } catch (e) {
        setError(new Error(`Cannot import ${file.name}: ${(e as Error).message}`));
      }
    });
  };

  // --- run ------------------------------------------------------------------------------------
  const running = !!execution && !TERMINAL.has(execution.status);

  const refreshRun = useCallback(async (id: string) => {
    const ex = await api<Execution>(`/api/v1/executions/${id}`);
    setExecution(ex);
    setRuns(Object.fromEntries(ex.nodeRuns.map((r) => [r.nodeId, r])));
    return ex;
  }, []);

  const run = async () => {
    setError(null);
    let id: string | null = isNew ? null : workflowId;
    if (isNew || dirty) id = await save();
    if (!id) return;
    if (isNew) {
      // saving moved the page to the new workflow: it starts the run once it opens
      sessionStorage.setItem("pixelmill.onOpen", JSON.stringify({ id, action: "run" }));
      return;
    }
    let started: { executionId: string };
    try {
      started = await api<{ executionId: string }>(`/api/v1/workflows/${encodeURIComponent(id)}/execute`, { body: { inputs: {} } });
    } catch (e) {
      setError(e);
      return;
    }
    refreshCredits();
    const eid = started.executionId;
    streamCtl.current?.abort();
    const ctl = new AbortController();
    streamCtl.current = ctl;
    await refreshRun(eid);
    try {
      await streamEvents(
        eid,
        ({ event, data }) => {
          const node = data?.node as string | undefined;
          if (event === "node.started" && node) setRuns((r) => ({ ...r, [node]: { ...r[node], status: "RUNNING", progress: 0 } }));
          else if (event === "execution.progress" && node) setRuns((r) => ({ ...r, [node]: { ...r[node], status: "RUNNING", progress: data.progress } }));
          else if ((event === "node.completed" || event === "node.failed" || event === "node.cancelled" || event === "node.skipped") && node) {
            refreshRun(eid).catch(() => null);
          } else if (event === "snapshot") setExecution((x) => (x ? { ...x, status: data.status, progress: data.progress, queuePosition: data.queuePosition } : x));
        },
        ctl.signal,
      );
    } catch (e) {
      setError(e);
    }
    if (!ctl.signal.aborted) {
      await refreshRun(eid).catch(setError);
      refreshCredits();
    }
  };

  const cancel = async () => {
    if (!execution) return;
    try {
      await api(`/api/v1/executions/${execution.id}/cancel`, { method: "POST" });
    } catch (e) {
      setError(e);
    }
  };

  const publish = async () => {
    setError(null);
    let id: string | null = isNew ? null : workflowId;
    if (isNew || dirty) id = await save();
    if (!id) return;
    if (isNew) {
      sessionStorage.setItem("pixelmill.onOpen", JSON.stringify({ id, action: "publish" }));
      return;
    }
    try {
      const r = await api<{ triggerUrl: string }>(`/api/v1/workflows/${encodeURIComponent(id)}/publish`, { method: "POST" });
      setPublished({ url: origin() + r.triggerUrl });
    } catch (e) {
      setError(e);
    }
  };

  const callTrigger = async () => {
    if (!published) return;
    try {
      const res = await fetch(published.url, { method: "POST", headers: { "content-type": "application/json" }, body: "{}", credentials: "omit" });
      const text = await res.text();
      setPublished({ ...published, response: `HTTP ${res.status}\n${text}` });
    } catch (e) {
      setError(e);
    }
  };

  // an action asked for before the first save runs once the saved workflow is open
  useEffect(() => {
    if (!loaded || isNew) return;
    const raw = sessionStorage.getItem("pixelmill.onOpen");
    if (!raw) return;
    try {
      const pending = JSON.parse(raw);
      if (pending.id !== workflowId) return;
      sessionStorage.removeItem("pixelmill.onOpen");
      if (pending.action === "run") run();
      else if (pending.action === "publish") publish();
    } catch {
      sessionStorage.removeItem("pixelmill.onOpen");
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [loaded]);

  // --- workflow inputs and batch runs ----------------------------------------------------------
  const inputs = (doc?.inputs ?? {}) as Record<string, InputDecl>;
  const bind = (nodeId: string, field: string, type: string) => {
    let name = field;
    for (let i = 2; inputs[name]; i++) name = `${field}${i}`;
    const current = nodes.find((n) => n.id === nodeId)?.data.params[field];
    setDoc((d) => ({ ...(d ?? { name, nodes: {} }), inputs: { ...(d?.inputs ?? {}), [name]: { type, default: current ?? null } } }));
    setParam(nodeId, field, { $input: name });
    setBatchOpen(true);
  };
  const removeInput = (name: string) => {
    const used = nodes.some((n) => Object.values(n.data.params).some((v) => v && typeof v === "object" && (v as { $input?: string }).$input === name));
    if (used) {
      setError(new Error(`The input “${name}” is still used by a node field: unbind it first.`));
      return;
    }
    setDoc((d) => {
      const next = { ...(d?.inputs ?? {}) } as Record<string, unknown>;
      delete next[name];
      return { ...(d ?? { name, nodes: {} }), inputs: next };
    });
    setDirty(true);
  };

  const runBatch = async () => {
    setError(null);
    if (isNew) {
      setError(new Error("Save the workflow first, then run the batch."));
      return;
    }
    if (dirty && !(await save())) return;
    const sets = rows.map((r) => {
      const out: Record<string, unknown> = {};
      for (const [name, decl] of Object.entries(inputs)) if (r[name] !== undefined && r[name] !== "") out[name] = parseValue(decl.type, r[name]);
      return out;
    });
    try {
      const r = await api<{ batchId: string | null; executionRuns: Execution[] }>(`/api/v1/workflows/${encodeURIComponent(workflowId)}/execute`, {
        body: sets.length > 1 ? { batch: sets } : { inputs: sets[0] },
      });
      setBatchRuns(r.executionRuns);
      refreshCredits();
    } catch (e) {
      setError(e);
    }
  };
  useEffect(() => {
    if (!batchRuns || batchRuns.every((r) => TERMINAL.has(r.status))) {
      if (batchRuns) refreshCredits();
      return;
    }
    const t = setTimeout(async () => {
      try {
        setBatchRuns(await Promise.all(batchRuns.map((r) => (TERMINAL.has(r.status) ? r : api<Execution>(`/api/v1/executions/${r.id}`)))));
      } catch (e) {
        setError(e);
      }
    }, 1500);
    return () => clearTimeout(t);
  }, [batchRuns]);

  const selected = nodes.find((n) => n.id === selectedId) ?? null;
  const selectedInfo = selected ? typeInfo[selected.data.nodeType] : undefined;
  const fieldErrors = useMemo(() => {
    const out: Record<string, string> = {};
    for (const p of problems) if (selected && p.node === selected.id && p.loc?.[0] === "params" && p.loc[1] !== undefined) out[String(p.loc[1])] = p.msg;
    return out;
  }, [problems, selected]);
  const selectedOtherProblems = selected ? problems.filter((p) => p.node === selected.id && p.loc?.[0] !== "params") : [];

  return (
    <div className="canvas-page">
      <div className="canvas-toolbar" role="toolbar" aria-label="Workflow">
        <a href="#/workflows" className="button secondary small">← Workflows</a>
        <input className="wf-name" aria-label="Workflow name" value={name} onChange={(e) => { setName(e.target.value); setDirty(true); }} />
        <button className="small" onClick={() => save()} disabled={saving}>{saving ? "Saving…" : dirty || isNew ? "Save" : "Saved"}</button>
        <button className="secondary small" onClick={undo} title="Undo (Ctrl+Z)">Undo</button>
        <button className="secondary small" onClick={redo} title="Redo (Ctrl+Shift+Z)">Redo</button>
        <button className="secondary small" onClick={() => save(true)} disabled={isNew}>Duplicate</button>
        <button className="secondary small" onClick={exportJson}>Export</button>
        <button className="secondary small" onClick={() => importRef.current?.click()}>Import</button>
        <input ref={importRef} type="file" accept="application/json,.json" hidden onChange={(e) => importJson(e.target.files?.[0])} data-testid="import-input" />
        <button className="secondary small danger-text" onClick={remove}>Delete</button>
        <span className="spacer" />
        <span className="price" data-testid="total-price">{total !== null ? <>Total ≈ <strong>{fmtCredits(total)}</strong> credits</> : problems.length ? <span className="field-error">{problems.length} problem{problems.length > 1 ? "s" : ""}</span> : ""}</span>
        <button className="secondary small" onClick={() => setBatchOpen(!batchOpen)} aria-expanded={batchOpen}>
          Inputs &amp; batch{Object.keys(inputs).length ? ` (${Object.keys(inputs).length})` : ""}
        </button>
        <button className="secondary small" onClick={publish} disabled={isNew && !nodes.length}>Publish</button>
        {running ? <button className="danger small" onClick={cancel}>Cancel run</button> : <button className="small" onClick={run} disabled={!nodes.length}>Run</button>}
      </div>
      <ErrorBox error={error} onDismiss={() => setError(null)} />
      {graphProblems.length > 0 && (
        <ul className="error problems">{graphProblems.map((p, i) => <li key={i}>{p.loc?.join(".")} {p.msg}</li>)}</ul>
      )}
      {execution && (
        <div className="run-strip" data-testid="run-status" data-status={execution.status}>
          Run <a href={`#/runs/${execution.id}`}>{shortId(execution.id)}</a>: <strong>{execution.status}</strong>
          {execution.status === "QUEUED" && execution.queuePosition !== null ? ` (position ${execution.queuePosition + 1})` : ""}
          {" · "}{Math.round(execution.progress * 100)}%
          {TERMINAL.has(execution.status) && ` · charged ${fmtCredits(execution.credits.charged)} credits · ${fmtMs(execution.durationMs)}`}
          {execution.error && <span className="field-error"> · {execution.error.message}</span>}
        </div>
      )}
      {batchOpen && (
        <div className="card batch" data-testid="batch">
          <div className="page-head">
            <strong>Workflow inputs</strong>
            <span className="muted small-text">Set per run; bind a node field with “as input” in its settings.</span>
            <div className="spacer" />
            <button className="secondary small" onClick={() => setBatchOpen(false)}>Close</button>
          </div>
          {Object.keys(inputs).length === 0 ? (
            <div className="muted">No inputs yet: select a node and press “as input” next to a field (for example the prompt).</div>
          ) : (
            <>
              <div className="table-wrap">
                <table className="list">
                  <thead>
                    <tr>
                      <th>#</th>
                      {Object.entries(inputs).map(([name, d]) => (
                        <th key={name}>{name} <span className="muted">({d.type})</span> <button className="link" onClick={() => removeInput(name)} aria-label={`Remove input ${name}`}>×</button></th>
                      ))}
                      <th />
                    </tr>
                  </thead>
                  <tbody>
                    {rows.map((row, i) => (
                      <tr key={i}>
                        <td>{i + 1}</td>
                        {Object.entries(inputs).map(([name, d]) => (
                          <td key={name}>
                            <input aria-label={`${name} for run ${i + 1}`} value={row[name] ?? ""} placeholder={d.default === null || d.default === undefined ? "" : String(d.default)}
                              onChange={(e) => setRows(rows.map((r, j) => (j === i ? { ...r, [name]: e.target.value } : r)))} />
                          </td>
                        ))}
                        <td><button className="secondary small" disabled={rows.length === 1} onClick={() => setRows(rows.filter((_, j) => j !== i))}>Remove</button></td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
              <div className="actions">
                <button className="secondary small" onClick={() => setRows([...rows, {}])} disabled={rows.length >= 100}>Add row</button>
                <button className="small" onClick={runBatch}>Run {rows.length > 1 ? `batch of ${rows.length}` : "with these inputs"}</button>
              </div>
            </>
          )}
          {batchRuns && (
            <ul className="batch-runs" data-testid="batch-runs">
              {batchRuns.map((r, i) => (
                <li key={r.id}>
                  {i + 1}. <a href={`#/runs/${r.id}`}>{shortId(r.id)}</a> <span className={`badge ${r.status}`}>{r.status.toLowerCase()}</span>
                  {r.outputs[0] && <img className="thumb" src={r.outputs[0]} alt={`run ${i + 1} output`} />}
                </li>
              ))}
            </ul>
          )}
        </div>
      )}
      {published && (
        <div className="card publish" data-testid="published">
          <div><strong>Published.</strong> Anyone with this URL can start the workflow (no API key); it is shown only now.</div>
          <div className="trigger-url"><code data-testid="trigger-url">{published.url}</code> <CopyButton text={published.url} /></div>
          <pre>{`curl -s -X POST ${published.url} \\\n  -H "content-type: application/json" -d '{}'`}</pre>
          <button className="small" onClick={callTrigger}>Call it now</button>{" "}
          <button className="secondary small" onClick={() => setPublished(null)}>Close</button>
          {published.response && <pre data-testid="trigger-response">{published.response}</pre>}
        </div>
      )}
      <div className="canvas-body">
        <aside className="palette" aria-label="Node types">
          <div className="palette-title">Add a node</div>
          {types.map((t) => (
            <button
              key={t.type}
              className="palette-item"
              draggable
              onDragStart={(e) => e.dataTransfer.setData("application/x-pixelmill-node", t.type)}
              onClick={() => addNode(t.type)}
              title={t.description}
              data-testid={`add-${t.type}`}
            >
              <span className="pi-name">{t.type}</span>
              <span className="pi-desc muted">{t.description}</span>
            </button>
          ))}
        </aside>
        <div
          className="flow"
          onDragOver={(e) => { e.preventDefault(); e.dataTransfer.dropEffect = "move"; }}
          onDrop={(e) => {
            const type = e.dataTransfer.getData("application/x-pixelmill-node");
            if (!type) return;
            e.preventDefault();
            addNode(type, flow.screenToFlowPosition({ x: e.clientX, y: e.clientY }));
          }}
        >
          {loaded && nodes.length === 0 && (
            <div className="flow-empty">Empty workflow: click a node type on the left (or drag it here). Try text_to_image → upscale → remove_background.</div>
          )}
          <ReactFlow<Node<Display, "pm">, Edge>
            nodes={displayNodes}
            edges={edges}
            nodeTypes={nodeTypes}
            onNodesChange={onNodesChange as any}
            onEdgesChange={onEdgesChange}
            onConnect={onConnect}
            isValidConnection={isValidConnection}
            onNodeDragStart={onNodeDragStart}
            onSelectionChange={({ nodes: sel }) => setSelectedId(sel[0]?.id ?? null)}
            fitView
            fitViewOptions={{ padding: 0.2, maxZoom: 1 }}
            deleteKeyCode={["Delete", "Backspace"]}
            proOptions={{ hideAttribution: true }}
          >
            <Background gap={20} />
            <Controls />
            <MiniMap pannable zoomable />
          </ReactFlow>
        </div>
        <aside className="inspector" aria-label="Node settings">
          {selected && selectedInfo ? (
            <>
              <div className="inspector-head">
                <strong>{selected.data.nodeType}</strong>
                <button className="secondary small danger-text" onClick={() => deleteNode(selected.id)}>Remove</button>
              </div>
              <p className="muted small-text">{selectedInfo.description}</p>
              <label>
                Node id
                <input key={selected.id} defaultValue={selected.id} onBlur={(e) => renameNode(selected.id, e.target.value)}
                  onKeyDown={(e) => e.key === "Enter" && (e.target as HTMLInputElement).blur()} />
              </label>
              <SchemaForm
                idPrefix={`p-${selected.id}`}
                schema={selectedInfo.params}
                values={selected.data.params}
                errors={fieldErrors}
                models={models}
                onChange={(f, v) => setParam(selected.id, f, v)}
                onBind={(f, t) => bind(selected.id, f, t)}
              />
              {selectedOtherProblems.length > 0 && (
                <ul className="error problems">{selectedOtherProblems.map((p, i) => <li key={i}>{p.loc?.join(".")} {p.msg}</li>)}</ul>
              )}
              {runs[selected.id]?.outputs?.length ? (
                <div className="inspector-outputs">
                  {runs[selected.id]!.outputs!.map((o) => <a key={o.url} href={o.url} target="_blank" rel="noreferrer"><img src={o.url} alt="output" /></a>)}
                </div>
              ) : null}
            </>
          ) : (
            <div className="muted">Select a node to edit its settings. Wire an output (right) to an input (left) of the same type. Delete removes the selection; Ctrl+Z undoes.</div>
          )}
        </aside>
      </div>
    </div>
  );
}
