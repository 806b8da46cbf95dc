// The public HTTP API, as Studio uses it. The API key lives in sessionStorage only
// (gone when the tab closes) and leaves the browser only in request headers.

const KEY = "pixelmill.apiKey";
const ADMIN = "pixelmill.adminKey";

export const session = {
  apiKey: (): string | null => sessionStorage.getItem(KEY),
  adminKey: (): string | null => sessionStorage.getItem(ADMIN),
  set(apiKey: string | null, adminKey: string | null) {
    if (apiKey) sessionStorage.setItem(KEY, apiKey);
    else sessionStorage.removeItem(KEY);
    if (adminKey) sessionStorage.setItem(ADMIN, adminKey);
    else sessionStorage.removeItem(ADMIN);
  },
  clear() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(ADMIN);
  },
};

export interface Problem {
  node: string | null;
  loc: (string | number)[];
  msg: string;
  batchIndex?: number;
}

export interface BreakdownItem {
  nodeId: string;
  type: string;
  credits: number;
}

/** An error answer of the API, with what Studio shows about it. */
export class ApiError extends Error {
  status: number;
  code: string;
  body: any;
  retryAfter: number | null;
  constructor(status: number, body: any, retryAfter: number | null) {
    const err = body && typeof body === "object" ? body.error : null;
    const message =
      (body && typeof body.message === "string" && body.message) ||
      (err && err.message) ||
      (typeof body?.detail === "string" ? body.detail : null) ||
      (Array.isArray(body?.detail) ? body.detail.map((d: any) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ") : null) ||
      `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = (err && err.code) || (status === 0 ? "network_error" : `http_${status}`);
    this.body = body;
    this.retryAfter = retryAfter;
  }
  get problems(): Problem[] {
    const b = this.body || {};
    return (b.problems || b.error?.problems || []) as Problem[];
  }
  get breakdown(): BreakdownItem[] {
    const b = this.body || {};
    return (b.breakdown || b.error?.breakdown || []) as BreakdownItem[];
  }
  get required(): number | null {
    const b = this.body || {};
    return b.requiredCredits ?? b.error?.requiredCredits ?? null;
  }
  get available(): number | null {
    const b = this.body || {};
    return b.availableCredits ?? b.error?.availableCredits ?? null;
  }
}

type Auth = "key" | "admin" | "none";

export interface RequestOptions {
  method?: string;
  body?: unknown;
  auth?: Auth;
  key?: string; // sign-in: try a key before it is stored
  signal?: AbortSignal;
}

let onUnauthorized: (() => void) | null = null;
export function setUnauthorizedHandler(fn: () => void) {
  onUnauthorized = fn;
}

function headersFor(auth: Auth, key?: string): Record<string, string> {
  const h: Record<string, string> = { accept: "application/json" };
  if (auth === "key") {
    const k = key ?? session.apiKey();
    if (k) h["x-key"] = k;
  } else if (auth === "admin") {
    const k = key ?? session.adminKey();
    if (k) h["authorization"] = `Bearer ${k}`;
  }
  return h;
}

export async function api<T = any>(path: string, opts: RequestOptions = {}): Promise<T> {
  const auth = opts.auth ?? "key";
  const headers = headersFor(auth, opts.key);
  let body: BodyInit | undefined;
  if (opts.body !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(opts.body);
  }
  let res: Response;
  try {
    res = await fetch(path, { method: opts.method ?? (body ? "POST" : "GET"), headers, body, signal: opts.signal, credentials: "omit" });
  } catch (e) {
    if ((e as Error).name === "AbortError") throw e;
    throw new ApiError(0, { error: { code: "network_error", message: "The server could not be reached. Is pixelmill running?" } }, null);
  }
  const text = await res.text();
  let data: any = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text };
    }
  }
  if (!res.ok) {
    const ra = res.headers.get("retry-after");
    const err = new ApiError(res.status, data, ra !== null && ra !== "" && !isNaN(Number(ra)) ? Number(ra) : null);
    if (res.status === 401 && !opts.key && auth === "key" && onUnauthorized) onUnauthorized();
    throw err;
  }
  return data as T;
}

// --- shapes --------------------------------------------------------------------

export interface ModelInfo {
  name: string;
  state: "resident" | "loading" | "cold";
  supports_image_input: boolean;
  default_steps: number;
  max_steps: number;
  bfl_endpoints: string[];
  load_seconds: number | null;
}

export interface Output {
  url: string;
  contentType: string;
  width: number | null;
  height: number | null;
}

export interface NodeRun {
  nodeId: string;
  type: string;
  status: string;
  progress: number;
  startedAt: number | null;
  finishedAt: number | null;
  durationMs: number | null;
  credits: number;
  estimatedCredits: number;
  cached: boolean;
  seed: number | null;
  outputs: Output[];
  error: { code: string; message: string } | null;
}

export interface Execution {
  id: string;
  workflowId: string | null;
  batchId: string | null;
  status: "QUEUED" | "RUNNING" | "COMPLETED" | "FAILED" | "CANCELLED";
  progress: number;
  queuePosition: number | null;
  estimatedStartAt: number | null;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  durationMs: number | null;
  credits: { estimated: number; charged: number | null };
  error: { code: string; message: string } | null;
  outputs: string[];
  nodeRuns: NodeRun[];
  inputs: Record<string, unknown> | null;
  streamUrl?: string;
}

/** The graph a run ran (``GET /api/v1/executions/{id}?include=graph``). */
export interface ExecutionGraph {
  nodes: Record<string, { type: string; params?: Record<string, unknown>; inputs?: Record<string, [string, string]> }>;
}

export const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

export interface NodeTypeInfo {
  type: string;
  description: string;
  params: JsonSchema;
  inputs: Record<string, { type: string; required: boolean }>;
  outputs: Record<string, string>;
  deterministic: boolean;
}

export interface JsonSchema {
  type?: string;
  title?: string;
  description?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  enum?: unknown[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  maxLength?: number;
  pattern?: string;
  anyOf?: JsonSchema[];
}

export interface StreamEvent {
  event: string;
  id: string | null;
  data: any;
}

/** Follow an execution's Server-Sent Events (the key goes in a header, not the URL). */
export async function streamEvents(executionId: string, onEvent: (e: StreamEvent) => void, signal: AbortSignal): Promise<void> {
  let lastId: string | null = null;
  for (let attempt = 0; attempt < 20 && !signal.aborted; attempt++) {
    const headers = headersFor("key");
    headers["accept"] = "text/event-stream";
    if (lastId) headers["last-event-id"] = lastId;
    let res: Response;
    try {
      res = await fetch(`/api/v1/executions/${encodeURIComponent(executionId)}/events`, { headers, signal, credentials: "omit" });
    } catch (e) {
      if (signal.aborted) return;
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    if (!res.ok || !res.body) {
      const text = await res.text().catch(() => "");
      let data: any = null;
      try {
        data = JSON.parse(text);
      } catch {
        data = { detail: text };
      }
      throw new ApiError(res.status, data, null);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let finished = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let idx: number;
        while ((idx = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, idx);
          buffer = buffer.slice(idx).replace(/^\r?\n\r?\n/, "");
          let event = "message";
          let id: string | null = null;
          const data: string[] = [];
          for (const line of block.split(/\r?\n/)) {
            if (line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") event = val;
            else if (field === "id") id = val;
            else if (field === "data") data.push(val);
          }
          if (!data.length) continue;
          if (id) lastId = id;
          let parsed: any = data.join("\n");
          try {
            parsed = JSON.parse(parsed);
          } catch {
            /* keep the text */
          }
          onEvent({ event, id, data: parsed });
          if (event === "execution.succeeded" || event === "execution.failed" || event === "execution.cancelled") finished = true;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    if (finished) return;
    // the server closes the stream after the terminal event; anything else: resume
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** A run's id in a few characters: ids are time-ordered (UUIDv7), so their last characters, the random ones, tell runs apart. */
export function shortId(id: string): string {
  return id.slice(-8);
}

export function fmtCredits(n: number | null | undefined): string {
  if (n === null || n === undefined || isNaN(n)) return "–";
  const abs = Math.abs(n);
  const digits = abs >= 100 ? 1 : abs >= 1 ? 2 : 4;
  return Number(n.toFixed(digits)).toString();
}

export function fmtTime(ts: number | null | undefined): string {
  if (!ts) return "–";
  return new Date(ts * 1000).toLocaleString();
}

export function fmtMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return "–";
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function origin(): string {
  return window.location.origin;
}
