import { JsonSchema, ModelInfo } from "../api";

/** A property's schema without the ``anyOf: [X, null]`` wrapper, and whether null is allowed. */
export function unwrap(s: JsonSchema): { schema: JsonSchema; nullable: boolean } {
  if (s.anyOf && s.anyOf.length) {
    const nonNull = s.anyOf.filter((x) => x.type !== "null");
    const nullable = nonNull.length < s.anyOf.length;
    const inner = nonNull[0] ?? {};
    return { schema: { ...inner, title: s.title, default: s.default, description: s.description }, nullable };
  }
  return { schema: s, nullable: false };
}

/** Literal params for a new node: each default, and a usable value for required fields without one. */
export function defaultParams(schema: JsonSchema, models: ModelInfo[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const required = new Set(schema.required ?? []);
  for (const [name, prop] of Object.entries(schema.properties ?? {})) {
    const { schema: s } = unwrap(prop);
    if (prop.default !== undefined && prop.default !== null) out[name] = prop.default;
    else if (required.has(name)) {
      if (name === "model" && models.length) out[name] = models[0].name;
      else if (s.enum?.length) out[name] = s.enum[0];
      else if (s.type === "integer" || s.type === "number") out[name] = s.minimum ?? 0;
      else if (s.type === "boolean") out[name] = false;
      else out[name] = "";
    }
  }
  return out;
}

function bounds(s: JsonSchema): string {
  const lo = s.minimum ?? (s.exclusiveMinimum !== undefined ? `>${s.exclusiveMinimum}` : undefined);
  const hi = s.maximum ?? (s.exclusiveMaximum !== undefined ? `<${s.exclusiveMaximum}` : undefined);
  if (lo === undefined && hi === undefined) return "";
  const big = (v: unknown) => (typeof v === "number" && v > 1e12 ? "∞" : String(v));
  return `${lo !== undefined ? big(lo) : "…"} – ${hi !== undefined ? big(hi) : "…"}`;
}

function label(name: string, s: JsonSchema): string {
  return s.title || name.replace(/_/g, " ");
}

interface Props {
  idPrefix: string;
  schema: JsonSchema;
  values: Record<string, unknown>;
  errors: Record<string, string>;
  models: ModelInfo[];
  onChange: (name: string, value: unknown) => void;
  /** Make this field a workflow input (``{"$input": name}``); absent: fields cannot be bound. */
  onBind?: (name: string, type: string) => void;
}

export function inputType(s: JsonSchema): string | null {
  const t = unwrap(s).schema.type;
  return t === "string" || t === "integer" || t === "number" || t === "boolean" ? t : null;
}

/** A form generated from a node's typed, bounded params (JSON Schema from GET /api/v1/nodes). */
export function SchemaForm({ idPrefix, schema, values, errors, models, onChange, onBind }: Props) {
  const required = new Set(schema.required ?? []);
  return (
    <div className="schema-form">
      {Object.entries(schema.properties ?? {}).map(([name, prop]) => {
        const { schema: s, nullable } = unwrap(prop);
        const id = `${idPrefix}-${name}`;
        const value = values[name];
        const err = errors[name];
        const hint = bounds(s);
        let control: React.ReactNode;
        const bound = value && typeof value === "object" && "$input" in (value as object) ? String((value as { $input: unknown }).$input) : null;
        if (bound !== null) {
          control = (
            <div className="bound" data-testid={`bound-${name}`}>
              from workflow input <code>{bound}</code>{" "}
              <button type="button" className="link" onClick={() => onChange(name, prop.default ?? null)}>unbind</button>
            </div>
          );
        } else if (name === "model" && s.type === "string" && !s.enum && models.length) {
          control = (
            <select id={id} value={String(value ?? "")} onChange={(e) => onChange(name, e.target.value)} aria-invalid={!!err}>
              {!models.some((m) => m.name === value) && <option value={String(value ?? "")}>{String(value ?? "(choose)")}</option>}
              {models.map((m) => <option key={m.name} value={m.name}>{m.name} ({m.state})</option>)}
            </select>
          );
        } else if (s.enum) {
          control = (
            <select id={id} value={value === null || value === undefined ? "" : String(value)} aria-invalid={!!err}
              onChange={(e) => onChange(name, e.target.value === "" ? null : s.enum!.find((x) => String(x) === e.target.value))}>
              {(nullable || value === undefined) && <option value="">(default)</option>}
              {s.enum.map((x) => <option key={String(x)} value={String(x)}>{String(x)}</option>)}
            </select>
          );
        } else if (s.type === "boolean") {
          control = <input id={id} type="checkbox" checked={!!value} onChange={(e) => onChange(name, e.target.checked)} aria-invalid={!!err} />;
        } else if (s.type === "integer" || s.type === "number") {
          control = (
            <input id={id} type="number" value={value === null || value === undefined ? "" : String(value)}
              min={s.minimum ?? s.exclusiveMinimum} max={s.maximum !== undefined && s.maximum < 1e12 ? s.maximum : s.exclusiveMaximum}
              step={s.type === "integer" ? 1 : "any"} placeholder={prop.default !== undefined && prop.default !== null ? String(prop.default) : nullable ? "default" : ""}
              aria-invalid={!!err}
              onChange={(e) => {
                const raw = e.target.value;
                if (raw === "") onChange(name, nullable || !required.has(name) ? null : "");
                else onChange(name, s.type === "integer" ? Math.trunc(Number(raw)) : Number(raw));
              }} />
          );
        } else if ((s.maxLength ?? 0) > 200 && name !== "url") {
          control = name === "data" ? (
            <div className="file-field">
              <input id={id} type="file" accept="image/*" onChange={(e) => {
                const f = e.target.files?.[0];
                if (!f) return;
                const r = new FileReader();
                r.onload = () => onChange(name, String(r.result));
                r.readAsDataURL(f);
              }} />
              {typeof value === "string" && value && <span className="muted small-text">{Math.round(value.length / 1024)} KiB loaded</span>}
            </div>
          ) : (
            <textarea id={id} rows={2} value={String(value ?? "")} maxLength={s.maxLength} aria-invalid={!!err}
              onChange={(e) => onChange(name, e.target.value === "" && nullable ? null : e.target.value)} />
          );
        } else {
          control = (
            <input id={id} type="text" value={String(value ?? "")} maxLength={s.maxLength} pattern={s.pattern} aria-invalid={!!err}
              placeholder={nullable ? "(none)" : ""}
              onChange={(e) => onChange(name, e.target.value === "" && nullable ? null : e.target.value)} />
          );
        }
        return (
          <div className={`field ${err ? "has-error" : ""}`} key={name} data-field={name}>
            <label htmlFor={id}>
              {label(name, s)}
              {required.has(name) && <span className="req" aria-label="required">*</span>}
              {hint && <span className="muted small-text"> {hint}</span>}
              {onBind && bound === null && inputType(prop) && (
                <button type="button" className="link bind" title="Set this value per run: a workflow input" onClick={() => onBind(name, inputType(prop)!)}>as input</button>
              )}
            </label>
            {control}
            {err && <span className="field-error" role="alert">{err}</span>}
          </div>
        );
      })}
    </div>
  );
}
