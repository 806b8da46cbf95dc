import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { api, ApiError, Execution, fmtCredits, fmtMs, ModelInfo, origin, streamEvents, TERMINAL, shortId } from "../api";
import { CopyButton, Empty, ErrorBox } from "../components/ErrorBox";
import { go, refreshCredits } from "../App";
import { useDebounced } from "../hooks";
import { MaskPainter } from "../components/MaskPainter";

const ASPECTS: [string, number, number][] = [
  ["1:1", 1, 1],
  ["4:3", 4, 3],
  ["3:4", 3, 4],
  ["3:2", 3, 2],
  ["2:3", 2, 3],
  ["16:9", 16, 9],
  ["9:16", 9, 16],
];
const LONG_SIDES = [256, 384, 512, 768, 1024, 1536];

function sizeFor(aspect: string, long: number): [number, number] {
  const a = ASPECTS.find((x) => x[0] === aspect) ?? ASPECTS[0];
  const [rw, rh] = [a[1], a[2]];
  const r16 = (v: number) => Math.max(64, Math.round(v / 16) * 16);
  return rw >= rh ? [r16(long), r16((long * rh) / rw)] : [r16((long * rw) / rh), r16(long)];
}

interface Form {
  model: string;
  prompt: string;
  aspect: string; // "custom" or a ratio
  long: number;
  width: number;
  height: number;
  steps: string;
  guidance: string;
  seed: string;
  n: number;
  outputFormat: "png" | "jpeg" | "webp";
  previews: number;
  strength: number;
}

interface Job {
  execution: Execution;
  progress: number;
  status: string;
  queuePosition: number | null;
  estimatedStartAt: number | null;
  previews: string[];
  error: string | null;
  params: Record<string, unknown>;
}

interface Result {
  url: string;
  seed: number | null;
  executionId: string;
  params: Record<string, unknown>;
  width: number | null;
  height: number | null;
  index: number;
}

const DRAFT_KEY = "pixelmill.playground";

function initialForm(): Form {
  const base: Form = {
    model: "",
    prompt: "a red circle on a blue background",
    aspect: "1:1",
    long: 512,
    width: 512,
    height: 512,
    steps: "",
    guidance: "",
    seed: "",
    n: 1,
    outputFormat: "png",
    previews: 2,
    strength: 0.6,
  };
  try {
    const saved = JSON.parse(sessionStorage.getItem(DRAFT_KEY) || "null");
    if (saved && typeof saved === "object") return { ...base, ...saved };
  } catch {
    /* ignore */
  }
  return base;
}

export function Playground() {
  const [models, setModels] = useState<ModelInfo[] | null>(null);
  const [loadError, setLoadError] = useState<unknown>(null);
  const [form, setForm] = useState<Form>(initialForm);
  const [image, setImage] = useState<{ dataUrl: string; name: string; width: number; height: number } | null>(null);
  const [estimate, setEstimate] = useState<{ credits: number | null; error: ApiError | null; busy: boolean }>({ credits: null, error: null, busy: false });
  const [submitError, setSubmitError] = useState<unknown>(null);
  const [job, setJob] = useState<Job | null>(null);
  const [results, setResults] = useState<Result[]>([]);
  const [selected, setSelected] = useState<Result | null>(null);
  const [dragging, setDragging] = useState(false);
  const [mask, setMask] = useState<string | null>(null);
  const [painting, setPainting] = useState(false);
  const abortRef = useRef<AbortController | null>(null);
  const fileRef = useRef<HTMLInputElement | null>(null);

  useEffect(() => {
    api<{ data: ModelInfo[] }>("/api/v1/models")
      .then((r) => {
        setModels(r.data);
        setForm((f) => (f.model && r.data.some((m) => m.name === f.model) ? f : { ...f, model: r.data[0]?.name ?? "" }));
      })
      .catch(setLoadError);
    return () => abortRef.current?.abort();
  }, []);

  useEffect(() => {
    sessionStorage.setItem(DRAFT_KEY, JSON.stringify(form));
  }, [form]);

  const model = models?.find((m) => m.name === form.model) ?? null;
  const set = <K extends keyof Form>(k: K, v: Form[K]) => setForm((f) => ({ ...f, [k]: v }));

  const params = useMemo(() => {
    const p: Record<string, unknown> = {
      model: form.model,
      prompt: form.prompt,
      width: form.width,
      height: form.height,
      num_images: form.n,
      output_format: form.outputFormat,
    };
    if (form.steps !== "") p.steps = Number(form.steps);
    if (form.guidance !== "") p.guidance = Number(form.guidance);
    if (form.seed !== "") p.seed = Number(form.seed);
    if (form.previews) p.previews = form.previews;
    if (image && model?.supports_image_input) p.strength = form.strength;
    return p;
  }, [form, image, model]);

  const graph = useMemo(() => {
    const nodes: Record<string, any> = {};
    if (image && model?.supports_image_input) {
      nodes.input = { type: "load_image", params: { data: image.dataUrl } };
      const inputs: Record<string, [string, string]> = { image: ["input", "images"] };
      if (mask && painting) {
        nodes.mask = { type: "load_image", params: { data: mask } };
        inputs.mask = ["mask", "images"];
      }
      nodes.generate = { type: "text_to_image", params, inputs };
    } else nodes.generate = { type: "text_to_image", params };
    return { nodes };
  }, [params, image, model, mask, painting]);

  // the price before submitting: a dry run of the same graph
  const debouncedGraph = useDebounced(graph, 350);
  useEffect(() => {
    if (!debouncedGraph.nodes.generate.params.model) return;
    const ctl = new AbortController();
    setEstimate((e) => ({ ...e, busy: true }));
    api<{ estimatedCredits: number }>("/api/v1/executions?dry_run=true", { body: debouncedGraph, signal: ctl.signal })
      .then((r) => setEstimate({ credits: r.estimatedCredits, error: null, busy: false }))
      .catch((e) => {
        if ((e as Error).name === "AbortError") return;
        setEstimate({ credits: null, error: e instanceof ApiError ? e : null, busy: false });
      });
    return () => ctl.abort();
  }, [debouncedGraph]);

  const fieldErrors = useMemo(() => {
    const out: Record<string, string> = {};
    for (const p of estimate.error?.problems ?? []) {
      const field = p.loc?.[0] === "params" ? String(p.loc[1]) : p.loc?.[0] === "inputs" ? "image" : "_";
      out[field] = out[field] ? out[field] + "; " + p.msg : p.msg;
    }
    return out;
  }, [estimate.error]);

  const running = !!job && !TERMINAL.has(job.status);

  const finish = useCallback(async (id: string, p: Record<string, unknown>) => {
    try {
      const ex = await api<Execution>(`/api/v1/executions/${id}`);
      setJob((j) => (j && j.execution.id === id ? { ...j, execution: ex, status: ex.status, progress: ex.progress, error: ex.error?.message ?? null } : j));
      const gen = ex.nodeRuns.find((n) => n.nodeId === "generate");
      if (ex.status === "COMPLETED" && gen) {
        const fresh = gen.outputs.map((o, i) => ({
          url: o.url,
          seed: gen.seed,
          executionId: id,
          params: p,
          width: o.width,
          height: o.height,
          index: i,
        }));
        setResults((r) => [...fresh, ...r]);
      }
    } catch (e) {
      setSubmitError(e);
    }
    refreshCredits();
    api<{ data: ModelInfo[] }>("/api/v1/models").then((r) => setModels(r.data)).catch(() => null); // loaded now
  }, []);

  const submit = async (ev?: React.FormEvent) => {
    ev?.preventDefault();
    if (running) return;
    setSubmitError(null);
    abortRef.current?.abort();
    const p = { ...params };
    let ex: Execution;
    try {
      ex = await api<Execution>("/api/v1/executions", { body: { ...graph, label: "playground" } });
    } catch (e) {
      setSubmitError(e);
      return;
    }
    refreshCredits();
    const ctl = new AbortController();
    abortRef.current = ctl;
    setJob({ execution: ex, progress: 0, status: ex.status, queuePosition: ex.queuePosition, estimatedStartAt: ex.estimatedStartAt, previews: [], error: null, params: p });
    try {
      await streamEvents(
        ex.id,
        ({ event, data }) => {
          setJob((j) => {
            if (!j || j.execution.id !== ex.id) return j;
            const next = { ...j };
            if (event === "snapshot") {
              next.status = data.status;
              next.progress = Math.max(j.progress, data.progress ?? 0);
              next.queuePosition = data.queuePosition;
              next.estimatedStartAt = data.estimatedStartAt;
            } else if (event === "execution.started" || event === "node.started") {
              next.status = "RUNNING";
            } else if (event === "execution.progress" && data.node === "generate") {
              next.progress = Math.max(j.progress, data.progress ?? 0);
              next.status = "RUNNING";
            } else if (event === "node.preview" && Array.isArray(data.images)) {
              next.previews = data.images.map((i: { url: string }) => i.url);
            } else if (event === "execution.succeeded") {
              next.status = "COMPLETED";
              next.progress = 1;
            } else if (event === "execution.failed") {
              next.status = "FAILED";
              next.error = data.error ?? "failed";
            } else if (event === "execution.cancelled") {
              next.status = "CANCELLED";
            }
            return next;
          });
        },
        ctl.signal,
      );
    } catch (e) {
      setSubmitError(e);
    }
    if (!ctl.signal.aborted) await finish(ex.id, p);
  };

  const cancel = async () => {
    if (!job) return;
    try {
      await api(`/api/v1/executions/${job.execution.id}/cancel`, { method: "POST" });
    } catch (e) {
      setSubmitError(e);
    }
  };

  const onFile = (file: File | undefined) => {
    if (!file) return;
    if (!file.type.startsWith("image/")) {
      setSubmitError(new Error(`${file.name} is not an image`));
      return;
    }
    const reader = new FileReader();
    reader.onload = () => {
      const dataUrl = String(reader.result);
      const img = new Image();
      img.onload = () => setImage({ dataUrl, name: file.name, width: img.naturalWidth, height: img.naturalHeight });
      img.src = dataUrl;
    };
    reader.readAsDataURL(file);
  };

  const applyAspect = (aspect: string, long: number) => {
    if (aspect === "custom") setForm((f) => ({ ...f, aspect, long }));
    else {
      const [w, h] = sizeFor(aspect, long);
      setForm((f) => ({ ...f, aspect, long, width: w, height: h }));
    }
  };

  const useSeed = (r: Result) => {
    if (r.seed !== null) set("seed", String(r.seed));
    document.getElementById("pg-seed")?.focus();
  };

  const sendToWorkflow = (r: Result) => {
    sessionStorage.setItem(
      "pixelmill.canvasDraft",
      JSON.stringify({ name: "From the playground", nodes: { generate: { type: "text_to_image", params: { ...r.params, seed: r.seed } } } }),
    );
    go("workflows/new");
  };

  if (loadError) return <div className="page"><h1>Playground</h1><ErrorBox error={loadError} /></div>;

  return (
    <div className="page playground">
      <h1>Playground</h1>
      <div className="pg-grid">
        <form className="card pg-form" onSubmit={submit} aria-label="Generation settings">
          <label>
            Model
            <select value={form.model} onChange={(e) => set("model", e.target.value)} name="model" disabled={!models}>
              {(models ?? []).map((m) => (
                <option key={m.name} value={m.name}>
                  {m.name} — {m.state === "resident" ? "loaded" : m.state === "loading" ? "loading…" : "cold (loads on first use)"}
                </option>
              ))}
            </select>
          </label>
          {model && (
            <div className="model-meta muted">
              <span className={`dot ${model.state}`} aria-hidden="true" /> {model.state === "resident" ? "loaded" : model.state}
              {model.load_seconds ? ` (loads in ${model.load_seconds.toFixed(1)} s)` : ""} · default {model.default_steps} steps
              {model.supports_image_input ? " · takes an input image" : ""}
            </div>
          )}
          <label>
            Prompt
            <textarea
              name="prompt"
              rows={3}
              value={form.prompt}
              onChange={(e) => set("prompt", e.target.value)}
              onKeyDown={(e) => {
                if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) submit();
              }}
              aria-invalid={!!fieldErrors.prompt}
            />
            {fieldErrors.prompt && <span className="field-error">{fieldErrors.prompt}</span>}
          </label>
          <div className="row">
            <label>
              Aspect
              <select name="aspect" value={form.aspect} onChange={(e) => applyAspect(e.target.value, form.long)}>
                {ASPECTS.map((a) => <option key={a[0]} value={a[0]}>{a[0]}</option>)}
                <option value="custom">custom</option>
              </select>
            </label>
            {form.aspect !== "custom" ? (
              <label>
                Long side
                <select name="long" value={form.long} onChange={(e) => applyAspect(form.aspect, Number(e.target.value))}>
                  {LONG_SIDES.map((l) => <option key={l} value={l}>{l}px</option>)}
                </select>
              </label>
            ) : null}
            <label>
              Width
              <input name="width" type="number" min={64} max={2048} step={16} value={form.width} readOnly={form.aspect !== "custom"}
                onChange={(e) => set("width", Number(e.target.value))} aria-invalid={!!fieldErrors.width} />
            </label>
            <label>
              Height
              <input name="height" type="number" min={64} max={2048} step={16} value={form.height} readOnly={form.aspect !== "custom"}
                onChange={(e) => set("height", Number(e.target.value))} aria-invalid={!!fieldErrors.height} />
            </label>
          </div>
          {(fieldErrors.width || fieldErrors.height) && <span className="field-error" data-testid="field-error">{fieldErrors.width || fieldErrors.height}</span>}
          <div className="row">
            <label>
              Steps
              <input name="steps" type="number" min={1} max={model?.max_steps ?? 100} placeholder={String(model?.default_steps ?? "")}
                value={form.steps} onChange={(e) => set("steps", e.target.value)} aria-invalid={!!fieldErrors.steps} />
            </label>
            <label>
              Guidance
              <input name="guidance" type="number" min={0} max={100} step={0.1} placeholder="model default"
                value={form.guidance} onChange={(e) => set("guidance", e.target.value)} aria-invalid={!!fieldErrors.guidance} />
            </label>
            <label>
              Seed
              <input id="pg-seed" name="seed" type="number" min={0} placeholder="random" value={form.seed}
                onChange={(e) => set("seed", e.target.value)} aria-invalid={!!fieldErrors.seed} />
            </label>
          </div>
          {["steps", "guidance", "seed", "num_images", "output_format"].map((f) =>
            fieldErrors[f] ? <span key={f} className="field-error" data-testid="field-error">{f}: {fieldErrors[f]}</span> : null,
          )}
          <div className="row">
            <label>
              Images
              <select name="n" value={form.n} onChange={(e) => set("n", Number(e.target.value))}>
                {[1, 2, 3, 4].map((n) => <option key={n} value={n}>{n}</option>)}
              </select>
            </label>
            <label>
              Format
              <select name="outputFormat" value={form.outputFormat} onChange={(e) => set("outputFormat", e.target.value as Form["outputFormat"])}>
                <option value="png">png</option>
                <option value="jpeg">jpeg</option>
                <option value="webp">webp</option>
              </select>
            </label>
            <label>
              Live previews
              <select name="previews" value={form.previews} onChange={(e) => set("previews", Number(e.target.value))}>
                {[0, 1, 2, 3].map((n) => <option key={n} value={n}>{n === 0 ? "off" : n}</option>)}
              </select>
            </label>
          </div>
          {model?.supports_image_input && (
            <div
              className={`dropzone ${dragging ? "dragging" : ""}`}
              onDragOver={(e) => { e.preventDefault(); setDragging(true); }}
              onDragLeave={() => setDragging(false)}
              onDrop={(e) => { e.preventDefault(); setDragging(false); onFile(e.dataTransfer.files?.[0]); }}
            >
              {image ? (
                <div className="dz-image">
                  <img src={image.dataUrl} alt="Input" />
                  <div>
                    <div>{image.name} ({image.width}×{image.height})</div>
                    <label>
                      Strength {form.strength.toFixed(2)}
                      <input type="range" min={0} max={1} step={0.05} value={form.strength} onChange={(e) => set("strength", Number(e.target.value))} />
                    </label>
                    <button type="button" className="secondary small" onClick={() => { setImage(null); setMask(null); setPainting(false); }}>Remove image</button>{" "}
                    <button type="button" className="secondary small" aria-pressed={painting} onClick={() => setPainting(!painting)}>
                      {painting ? "No mask" : "Paint a mask"}
                    </button>
                  </div>
                </div>
              ) : (
                <div>
                  Optional input image (image-to-image): drop it here or{" "}
                  <button type="button" className="link" onClick={() => fileRef.current?.click()}>choose a file</button>
                </div>
              )}
              {image && painting && <MaskPainter src={image.dataUrl} width={image.width} height={image.height} onMask={setMask} />}
              <input ref={fileRef} type="file" accept="image/*" hidden data-testid="image-input" onChange={(e) => onFile(e.target.files?.[0])} />
              {fieldErrors.image && <span className="field-error">{fieldErrors.image}</span>}
            </div>
          )}
          <div className="submit-row">
            <div className="price" data-testid="estimate" aria-live="polite">
              {estimate.credits !== null ? <>Price: <strong>{fmtCredits(estimate.credits)}</strong> credits</> : estimate.error ? <span className="field-error">Not valid yet</span> : "Pricing…"}
            </div>
            {running ? (
              <button type="button" className="danger" onClick={cancel}>Cancel</button>
            ) : (
              <button type="submit" disabled={!form.model}>Generate</button>
            )}
          </div>
          {estimate.error && !estimate.error.problems.length && <ErrorBox error={estimate.error} />}
          <ErrorBox error={submitError} onDismiss={() => setSubmitError(null)} />
        </form>

        <section className="pg-output" aria-label="Results">
          {job && (
            <div className="card job" data-testid="job" data-status={job.status}>
              <div className="job-head">
                <strong>{job.status}</strong>
                <span className="muted">{shortId(job.execution.id)}</span>
                <div className="spacer" />
                {TERMINAL.has(job.status) ? (
                  <span data-testid="charged">
                    Charged <strong>{fmtCredits(job.execution.credits.charged ?? (job.status === "COMPLETED" ? job.execution.credits.estimated : 0))}</strong> credits
                    {job.execution.durationMs !== null ? ` · ${fmtMs(job.execution.durationMs)}` : ""}
                  </span>
                ) : (
                  <span>Estimated {fmtCredits(job.execution.credits.estimated)} credits</span>
                )}
              </div>
              <div className="progress" role="progressbar" aria-valuemin={0} aria-valuemax={100} aria-valuenow={Math.round(job.progress * 100)}>
                <div style={{ width: `${Math.round(job.progress * 100)}%` }} />
              </div>
              {job.status === "QUEUED" && (
                <div className="muted" data-testid="queue">
                  Queued{job.queuePosition !== null ? ` — position ${job.queuePosition + 1}` : ""}
                  {job.estimatedStartAt ? `, starts in about ${Math.max(0, Math.round(job.estimatedStartAt - Date.now() / 1000))} s` : ""}
                </div>
              )}
              {job.status === "RUNNING" && <div className="muted">Generating… {Math.round(job.progress * 100)}%</div>}
              {job.error && <div className="error">{job.error}</div>}
              {!TERMINAL.has(job.status) && job.previews.length > 0 && (
                <div className="previews" data-testid="previews">
                  {job.previews.map((u) => <img key={u} src={u} alt="Preview of the image being generated" />)}
                </div>
              )}
            </div>
          )}
          {results.length === 0 && !job && (
            <Empty title="No images yet">Write a prompt and press Generate (Ctrl+Enter). Results of this session appear here.</Empty>
          )}
          <div className="gallery" data-testid="gallery">
            {results.map((r) => (
              <figure key={r.url} className="card result">
                <button type="button" className="img-button" onClick={() => setSelected(r)} aria-label="Open full size">
                  <img src={r.url} alt={String(r.params.prompt ?? "Generated image")} />
                </button>
                <figcaption>
                  <div className="muted small-text">seed {r.seed ?? "–"} · {r.width}×{r.height}</div>
                  <div className="actions">
                    <a className="button secondary small" href={r.url} download>Download</a>
                    <button type="button" className="secondary small" onClick={() => useSeed(r)}>Use this seed</button>
                    <button type="button" className="secondary small" onClick={() => sendToWorkflow(r)}>Send to workflow</button>
                  </div>
                </figcaption>
              </figure>
            ))}
          </div>
          <CodeSnippets params={params} model={model} hasImage={!!image} />
        </section>
      </div>
      {selected && <Lightbox result={selected} onClose={() => setSelected(null)} />}
    </div>
  );
}

function Lightbox({ result, onClose }: { result: Result; onClose: () => void }) {
  const ref = useRef<HTMLDivElement | null>(null);
  useEffect(() => {
    ref.current?.focus();
    const on = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    window.addEventListener("keydown", on);
    return () => window.removeEventListener("keydown", on);
  }, [onClose]);
  return (
    <div className="lightbox" role="dialog" aria-modal="true" aria-label="Image" onClick={onClose} ref={ref} tabIndex={-1}>
      <div className="lightbox-inner" onClick={(e) => e.stopPropagation()}>
        <img src={result.url} alt="Generated image, full size" />
        <div className="lightbox-meta">
          <div>seed <strong>{result.seed}</strong> · {result.width}×{result.height}</div>
          <pre>{JSON.stringify(result.params, null, 2)}</pre>
          <a className="button small" href={result.url} download>Download</a>{" "}
          <button className="secondary small" onClick={onClose}>Close</button>
        </div>
      </div>
    </div>
  );
}

function CodeSnippets({ params, model, hasImage }: { params: Record<string, unknown>; model: ModelInfo | null; hasImage: boolean }) {
  const [tab, setTab] = useState<"curl" | "bfl" | "openai">("curl");
  const base = origin();
  const endpoint = model?.bfl_endpoints.find((e) => e === "flux-dev") ?? model?.bfl_endpoints[0] ?? null;
  const bflBody: Record<string, unknown> = { prompt: params.prompt, width: params.width, height: params.height };
  if (params.steps !== undefined) bflBody.steps = params.steps;
  if (params.guidance !== undefined) bflBody.guidance = params.guidance;
  if (params.seed !== undefined) bflBody.seed = params.seed;
  bflBody.output_format = params.output_format === "webp" ? "png" : params.output_format;
  const size = `${params.width}x${params.height}`;
  const graph = { nodes: { generate: { type: "text_to_image", params } } };
  const snippets: Record<string, string> = {
    curl: endpoint
      ? `# BFL-style: submit, then poll the polling_url
curl -s -X POST ${base}/v1/${endpoint} \\
  -H "x-key: $PIXELMILL_KEY" -H "content-type: application/json" \\
  -d '${JSON.stringify(bflBody)}'

# or exactly what Studio runs (the workflow graph API, with live events)
curl -s -X POST ${base}/api/v1/executions \\
  -H "x-key: $PIXELMILL_KEY" -H "content-type: application/json" \\
  -d '${JSON.stringify(graph)}'`
      : `curl -s -X POST ${base}/api/v1/executions \\
  -H "x-key: $PIXELMILL_KEY" -H "content-type: application/json" \\
  -d '${JSON.stringify(graph)}'`,
    bfl: endpoint
      ? `# pip install blackforest
import os
from blackforest import BFLClient

client = BFLClient(api_key=os.environ["PIXELMILL_KEY"], base_url="${base}")
result = client.generate("${endpoint}", ${pyDict(bflBody)})
print(result)`
      : `# ${model?.name ?? "this model"} is not mapped to a BFL endpoint on this server`,
    openai: `# pip install openai
import os
from openai import OpenAI

client = OpenAI(base_url="${base}/v1", api_key=os.environ["PIXELMILL_KEY"])
images = client.images.generate(
    model="${params.model}",
    prompt=${JSON.stringify(params.prompt)},
    size="${size}",
    n=${params.num_images ?? 1},${params.seed !== undefined ? `\n    extra_body={"seed": ${params.seed}},` : ""}
)
print(images.data[0].url)`,
  };
  return (
    <section className="card code" aria-label="Code for this request">
      <div className="tabs" role="tablist">
        {(["curl", "bfl", "openai"] as const).map((t) => (
          <button key={t} role="tab" aria-selected={tab === t} className={tab === t ? "tab active" : "tab"} onClick={() => setTab(t)} type="button">
            {t === "curl" ? "curl" : t === "bfl" ? "Python · BFL SDK" : "Python · OpenAI"}
          </button>
        ))}
        <div className="spacer" />
        <CopyButton text={snippets[tab]} />
      </div>
      {hasImage && <div className="muted small-text">The input image is left out of the snippets.</div>}
      <pre data-testid="snippet">{snippets[tab]}</pre>
    </section>
  );
}

function pyDict(o: Record<string, unknown>): string {
  const parts = Object.entries(o).map(([k, v]) => `"${k}": ${typeof v === "string" ? JSON.stringify(v) : v === null ? "None" : String(v)}`);
  return "{" + parts.join(", ") + "}";
}
