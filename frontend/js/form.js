// The new-run form, generated from the server's own schema (RunConfig in /openapi.json), so
// every field, default, range and choice stays in step with dst_core/store/config.py.
//
// The schema also says how to show each field (dst_core/store/config.py, `form_schema`): its
// label (`title`), its group (`x-group`, in FORM_GROUPS' order), the methods it means something
// for (`x-methods`: the form shows only the chosen method's options and sends only those), the
// values other fields must have for it to matter (`x-shown-when`: N and M under n:m) and the
// words for a choice's values (`x-choice-labels`: "MNIST (5,000-image subset)").
import { api, ApiError } from "./api.js";
import * as urls from "./urls.js";

// The form's groups, in order (the schema's `x-group`); "advanced" starts folded.
const FORM_GROUPS = [
  ["task", "Task & model"], ["method", "Method"], ["schedule", "Schedule"],
  ["optimisation", "Optimisation"], ["advanced", "Advanced"],
];
const FOLDED_GROUP = "advanced";

// Where a schema allows null, an empty input means "the method's published default".
function describe(name, schema) {
  const options = schema.anyOf || [schema];
  const nullable = options.some((o) => o.type === "null");
  const main = options.find((o) => o.type !== "null") || {};
  let kind = "text";
  if (main.enum) kind = "enum";
  else if (main.type === "integer") kind = "integer";
  else if (main.type === "number") kind = "number";
  // A yes/no that may be left to the method (null) needs three states: a select, not a box.
  else if (main.type === "boolean") kind = nullable ? "tristate" : "boolean";
  else if (main.type === "array") kind = "array";
  return {
    name, kind, nullable, enum: main.enum || [], default: schema.default,
    title: schema.title || name, description: schema.description || "",
    minimum: main.minimum ?? main.exclusiveMinimum, maximum: main.maximum ?? main.exclusiveMaximum,
    exclusiveMinimum: main.exclusiveMinimum !== undefined, exclusiveMaximum: main.exclusiveMaximum !== undefined,
    maxLength: main.maxLength,
    group: schema["x-group"] || FOLDED_GROUP,
    methods: Array.isArray(schema["x-methods"]) ? schema["x-methods"] : null, // null: every method
    shownWhen: schema["x-shown-when"] || {},
    choiceLabels: schema["x-choice-labels"] || {},
  };
}

// A resolved value as the form shows it: yes/no for a flag, numbers and text as they are.
function shownValue(value) {
  if (value === true) return "yes";
  if (value === false) return "no";
  return String(value);
}

function rangeText(field) {
  const parts = [];
  if (field.minimum !== undefined) parts.push(`${field.exclusiveMinimum ? ">" : "≥"} ${field.minimum}`);
  if (field.maximum !== undefined) parts.push(`${field.exclusiveMaximum ? "<" : "≤"} ${field.maximum}`);
  return parts.join(", ");
}

// Nullable fields left empty take a default the server resolves: the task's for epochs,
// the chosen method's for the rest.
function nullLabel(field) {
  return field.name === "epochs" ? "task default" : "method default";
}

function defaultText(field) {
  if (field.default === null || field.default === undefined) return field.nullable ? nullLabel(field) : "none";
  if (Array.isArray(field.default)) return field.default.join(", ") || "none";
  if (field.default === "") return "empty";
  return String(field.default);
}

function inputFor(field) {
  let input;
  if (field.kind === "enum") {
    input = document.createElement("select");
    if (field.nullable) input.append(new Option(nullLabel(field), ""));
    for (const value of field.enum) {
      input.append(new Option(field.choiceLabels[value] || String(value), String(value)));
    }
  } else if (field.kind === "tristate") {
    input = document.createElement("select");
    input.append(new Option(nullLabel(field), ""), new Option("yes", "true"), new Option("no", "false"));
  } else if (field.kind === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
  } else {
    input = document.createElement("input");
    input.type = field.kind === "integer" || field.kind === "number" ? "number" : "text";
    if (field.kind === "integer") input.step = "1";
    if (field.kind === "number") input.step = "any";
    if (field.kind === "array") input.placeholder = "comma-separated, e.g. 64, 64";
    else if (field.nullable) input.placeholder = nullLabel(field);
  }
  input.id = `field-${field.name}`;
  input.name = field.name;
  return input;
}

function setValue(input, field, value) {
  if (field.kind === "boolean") input.checked = Boolean(value);
  else if (field.kind === "tristate") input.value = value === null || value === undefined ? "" : String(Boolean(value));
  else if (value === null || value === undefined) input.value = "";
  else if (Array.isArray(value)) input.value = value.join(", ");
  else input.value = String(value);
}

// Numbers stay numbers; anything unparsable is sent as typed, so the server names the field.
function parseNumber(text, integer) {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))) return text;
  return value;
}

function readValue(input, field) {
  if (field.kind === "boolean") return input.checked;
  if (field.kind === "tristate") return input.value === "" ? undefined : input.value === "true";
  const text = input.value;
  if (field.kind === "array") {
    return text.split(/[\s,]+/).filter(Boolean).map((part) => parseNumber(part, true));
  }
  if (text.trim() === "") return field.nullable ? undefined : (field.kind === "text" ? "" : undefined);
  if (field.kind === "integer") return parseNumber(text, true);
  if (field.kind === "number") return parseNumber(text, false);
  return text;
}

// FastAPI's 422 `detail` → {field: message}; model-level errors name the field first ("model: …").
export function fieldErrors(detail, names) {
  const errors = {};
  const general = [];
  for (const item of Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }]) {
    const loc = item.loc || [];
    const msg = String(item.msg || "").replace(/^Value error, /, "");
    let field = loc[0] === "body" ? loc[1] : loc[loc.length - 1];
    const entry = loc[0] === "body" && Number.isInteger(loc[2]) ? `entry ${loc[2] + 1}: ` : "";
    if (!names.includes(field)) {
      const named = /^(\w+):/.exec(msg);
      field = named && names.includes(named[1]) ? named[1] : null;
    }
    if (field) (errors[field] ||= []).push(entry + msg);
    else general.push(msg);
  }
  return { errors, general };
}

// The body schema of POST /api/runs (whatever its component is called), else RunConfig.
export function runConfigSchema(openapi) {
  const schemas = openapi.components?.schemas || {};
  const resolve = (node) => {
    if (!node) return null;
    if (node.$ref) return schemas[node.$ref.split("/").pop()] || null;
    if (node.properties) return node;
    for (const option of node.anyOf || node.allOf || []) {
      const found = resolve(option);
      if (found) return found;
    }
    return null;
  };
  const body = openapi.paths?.[urls.runs()]?.post?.requestBody?.content?.["application/json"]?.schema;
  const schema = resolve(body) || schemas.RunConfig || schemas["RunConfig-Input"];
  if (!schema) throw new Error("no RunConfig in the server's schema");
  return schema;
}

const PLAN_DELAY_MS = 250; // typing pauses this long before the schedule is asked for

// "150,000 steps (3,000 epochs × 50) · 2,999 rewires, every 50 steps, until step 149,950".
export function planText(plan) {
  const count = (value) => Number(value).toLocaleString("en");
  const steps = `${count(plan.total_steps)} steps (${count(plan.epochs)} epochs × ${count(plan.steps_per_epoch)})`;
  if (plan.rewires === 0 && plan.warnings.length === 0) {
    return `${steps} · ${plan.method}: the mask never changes${estimateText(plan.estimate)}`;
  }
  const rewires = plan.rewires === 1 ? "1 rewire" : `${count(plan.rewires)} rewires`;
  const when = plan.rewires ? `, every ${count(plan.interval_steps)} steps, the last at step ${count(plan.last_rewire_step)}` : "";
  const moved = plan.rewires && plan.connections_moved
    ? ` · the first moves ${count(plan.connections_moved)} connections` : "";
  return `${steps} · ${rewires}${when}${moved}${estimateText(plan.estimate)}`;
}

// " · about 2 min (…measured…)", from the server's measured steps/s; "" when it has none.
export function estimateText(estimate) {
  if (!estimate || typeof estimate.seconds !== "number") return "";
  const seconds = estimate.seconds;
  const duration = seconds < 90 ? `${Math.max(1, Math.round(seconds))} s`
    : seconds < 5400 ? `${Math.round(seconds / 60)} min` : `${(seconds / 3600).toFixed(1)} h`;
  return ` · about ${duration} (${estimate.basis})`;
}

export class RunForm {
  constructor(form, { onStarted, onEdited = () => {} }) {
    this.form = form;
    this.onStarted = onStarted;
    this.onEdited = onEdited; // (edited) when the form starts or stops differing from its defaults
    this.defaults = null; // values() right after the last reset
    this.fields = [];
    this.inputs = new Map();
    this.planAsked = 0;
    form.noValidate = true; // the server validates and answers 422 naming the field
    form.addEventListener("submit", (event) => { event.preventDefault(); this.submit(); });
    form.querySelector("#form-reset").addEventListener("click", () => this.reset());
    form.addEventListener("input", () => { this.showApplicable(); this.schedulePlan(); this.noticeEdits(); });
    form.addEventListener("change", () => { this.showApplicable(); this.schedulePlan(); this.noticeEdits(); });
    // The schedule this form would start, with warnings, shown before Start is pressed.
    this.planBox = document.createElement("section");
    this.planBox.id = "form-plan";
    this.planBox.setAttribute("aria-live", "polite");
    this.planBox.setAttribute("aria-label", "Schedule of this run");
    this.planSummary = document.createElement("p");
    this.planSummary.id = "plan-summary";
    this.planWarnings = document.createElement("ul");
    this.planWarnings.id = "plan-warnings";
    this.planBox.append(this.planSummary, this.planWarnings);
    // In the form's bar that stays at the bottom of the window: the schedule, its warnings and
    // Launch are in sight however far down the fields go.
    form.querySelector(".form-actions").prepend(this.planBox);
  }

  schedulePlan() {
    clearTimeout(this.planTimer);
    this.planTimer = setTimeout(() => this.updatePlan(), PLAN_DELAY_MS);
  }

  // Asks the server what these settings will do; an answer to an older request is dropped.
  async updatePlan() {
    const asked = ++this.planAsked;
    let plan;
    try {
      plan = await api(urls.plan(), { method: "POST", body: this.values() });
    } catch (error) {
      if (asked !== this.planAsked) return;
      this.planSummary.textContent = error instanceof ApiError && error.status === 422
        ? "Schedule: fix the marked settings first." : `Schedule unavailable: ${error.message}`;
      this.planWarnings.replaceChildren();
      this.form.dataset.planRewires = "";
      return;
    }
    if (asked !== this.planAsked) return;
    this.plan = plan;
    this.planSummary.textContent = planText(plan);
    this.planSummary.title = plan.estimate?.basis || ""; // why there is no estimate, too
    this.planWarnings.replaceChildren(...plan.warnings.map((text) =>
      Object.assign(document.createElement("li"), { className: "plan-warning", textContent: text })));
    this.form.dataset.planRewires = String(plan.rewires);
    this.showResolved(plan.resolved || {});
    this.showApplicable(); // N and M follow the structure the method resolves to
  }

  // A field left empty shows the value the run will use ("method default: 0.3").
  showResolved(resolved) {
    for (const field of this.fields) {
      if (!field.nullable || !(field.name in resolved)) continue;
      const input = this.inputs.get(field.name);
      const text = `${nullLabel(field)}: ${shownValue(resolved[field.name])}`;
      if (input.tagName === "SELECT") input.options[0].textContent = text;
      else input.placeholder = text;
    }
  }

  async load() {
    const container = this.form.querySelector("#form-fields");
    let schema;
    try {
      schema = runConfigSchema(await api(urls.openapi()));
    } catch (error) {
      container.textContent = `Could not read the run schema: ${error.message}`;
      return;
    }
    this.required = schema.required || [];
    this.fields = Object.entries(schema.properties).map(([name, prop]) => describe(name, prop));
    this.rows = new Map();
    // The groups in FORM_GROUPS' order, then any group the schema names that it does not.
    const order = FORM_GROUPS.map(([key]) => key);
    for (const field of this.fields) if (!order.includes(field.group)) order.push(field.group);
    const titles = new Map(FORM_GROUPS);
    this.groups = order.map((key) => this.group(key, titles.get(key) || key,
                                                this.fields.filter((field) => field.group === key)))
      .filter(Boolean);
    this.hiddenNote = document.createElement("p");
    this.hiddenNote.id = "form-hidden-note";
    this.hiddenNote.className = "hint";
    this.hiddenNote.setAttribute("aria-live", "polite");
    container.classList.remove("form-grid");
    container.replaceChildren(this.hiddenNote, ...this.groups.map((group) => group.root));
    this.reset();
  }

  // One group of fields: a fieldset with its legend ("advanced": inside a folded <details>).
  group(key, title, fields) {
    if (!fields.length) return null;
    const fieldset = document.createElement("fieldset");
    fieldset.className = "form-group";
    fieldset.id = `group-${key}`;
    fieldset.dataset.group = key;
    const legend = document.createElement("legend");
    legend.textContent = title;
    const grid = document.createElement("div");
    grid.className = "form-grid";
    grid.append(...fields.map((field) => this.row(field)));
    fieldset.append(legend, grid);
    if (key !== FOLDED_GROUP) return { key, root: fieldset, fieldset };
    const details = document.createElement("details");
    details.className = "form-group-folded";
    const summary = document.createElement("summary");
    details.append(summary, fieldset);
    return { key, title, root: details, fieldset, details, summary, fields };
  }

  // Whether `field` means something for the settings the form holds now: the chosen method
  // is one of its `x-methods`, and each field it depends on (`x-shown-when`) has the value
  // (a field left to the method counts as what the method resolves it to).
  applicable(field, seen = new Set()) {
    if (field.methods) {
      const method = this.inputs.get("method")?.value;
      if (method && !field.methods.includes(method)) return false;
    }
    seen.add(field.name);
    for (const [name, wanted] of Object.entries(field.shownWhen)) {
      const other = this.fields.find((candidate) => candidate.name === name);
      if (!other || seen.has(name) || !this.applicable(other, seen)) return false;
      let value = readValue(this.inputs.get(name), other);
      if (value === undefined) value = this.plan?.resolved?.[name] ?? other.default;
      if (String(value) !== String(wanted)) return false;
    }
    return true;
  }

  // Shows the fields that apply to the chosen method (and settings) only; the note says how
  // many others there are.
  showApplicable() {
    if (!this.rows) return;
    let hidden = 0;
    for (const field of this.fields) {
      const shown = this.applicable(field);
      this.rows.get(field.name).hidden = !shown;
      if (!shown) hidden += 1;
    }
    for (const group of this.groups) {
      const rows = [...group.fieldset.querySelectorAll(".field")];
      group.root.hidden = rows.every((row) => row.hidden);
      // A folded group names what it holds, so nothing is out of sight unannounced.
      if (group.summary) {
        const shown = group.fields.filter((field) => !this.rows.get(field.name).hidden);
        group.summary.textContent = `${group.title}: ${shown.map((field) => field.title).join(", ")}`;
      }
    }
    const method = this.inputs.get("method")?.value || "";
    this.hiddenNote.textContent = hidden
      ? `Showing the settings ${method} uses; ${hidden} other${hidden === 1 ? " applies" : "s apply"} ` +
        "only to other methods or settings (they appear when they apply, and are not sent)."
      : "";
    this.hiddenNote.hidden = !hidden;
  }

  row(field) {
    const row = document.createElement("div");
    row.className = "field";
    row.dataset.field = field.name;
    row.dataset.kind = field.kind;
    const label = document.createElement("label");
    label.htmlFor = `field-${field.name}`;
    label.textContent = field.title;
    const input = inputFor(field);
    const help = document.createElement("small");
    help.className = "help";
    help.id = `help-${field.name}`;
    const range = rangeText(field);
    // The field's own name first: what the API, the CLI and a saved run's config call it.
    const code = document.createElement("code");
    code.textContent = field.name;
    help.append(code, ` · ${field.description}${field.description ? ". " : ""}Default: ${defaultText(field)}` +
      (range ? ` (${range})` : ""));
    const error = document.createElement("p");
    error.className = "field-error";
    error.id = `error-${field.name}`;
    error.hidden = true;
    input.setAttribute("aria-describedby", `${help.id} ${error.id}`);
    input.addEventListener("input", () => this.clearError(field.name));
    this.inputs.set(field.name, input);
    this.rows.set(field.name, row);
    row.append(label, input, help, error);
    return row;
  }

  reset() {
    for (const field of this.fields) setValue(this.inputs.get(field.name), field, field.default);
    this.showApplicable();
    this.clearErrors();
    this.schedulePlan();
    this.defaults = JSON.stringify(this.values());
    this.noticeEdits();
  }

  // The form filled from a saved run's config ("Clone" in the runs list): every field it
  // knows takes the run's value, the others their default. Returns the keys of `config` the
  // form has no field for (a script's own config), so the page can say they were left out.
  fill(config, name) {
    this.reset();
    const ignored = [];
    for (const [key, value] of Object.entries(config || {})) {
      const field = this.fields.find((candidate) => candidate.name === key);
      if (!field || key === "name") { if (key !== "name") ignored.push(key); continue; }
      setValue(this.inputs.get(key), field, value);
    }
    const nameField = this.fields.find((field) => field.name === "name");
    if (nameField && name) setValue(this.inputs.get("name"), nameField, `${name} (copy)`.slice(0, 200));
    // A value the form shows hidden (another method's option) is kept in its box, not sent;
    // the folded Advanced group opens when the run set one of its fields.
    const folded = this.groups?.find((group) => group.key === FOLDED_GROUP);
    if (folded?.details && folded.fields.some((field) => field.name in (config || {}))) folded.details.open = true;
    this.showApplicable();
    this.clearErrors();
    this.schedulePlan();
    this.noticeEdits();
    return ignored;
  }

  // Whether the form holds settings other than the defaults (what the top bar's Start says).
  edited() {
    return this.defaults !== null && JSON.stringify(this.values()) !== this.defaults;
  }

  noticeEdits() {
    const edited = this.edited();
    if (edited !== this.wasEdited) { this.wasEdited = edited; this.onEdited(edited); }
  }

  // The settings to send: the fields that apply (one left from another method is not sent).
  values() {
    const body = {};
    for (const field of this.fields) {
      if (!this.applicable(field)) continue;
      const value = readValue(this.inputs.get(field.name), field);
      if (value !== undefined) body[field.name] = value;
    }
    return body;
  }

  clearError(name) {
    const error = this.form.querySelector(`#error-${name}`);
    if (!error) return;
    error.hidden = true;
    error.textContent = "";
    this.inputs.get(name).removeAttribute("aria-invalid");
  }

  clearErrors() {
    for (const field of this.fields) this.clearError(field.name);
    const general = this.form.querySelector("#form-error");
    general.textContent = "";
    general.hidden = true;
  }

  showErrors(detail) {
    const names = this.fields.map((f) => f.name);
    const { errors, general } = fieldErrors(detail, names);
    let first = null;
    for (const [name, messages] of Object.entries(errors)) {
      const error = this.form.querySelector(`#error-${name}`);
      error.textContent = messages.join("; ");
      error.hidden = false;
      const input = this.inputs.get(name);
      input.setAttribute("aria-invalid", "true");
      const folded = input.closest("details");
      if (folded) folded.open = true; // a refused field is never out of sight
      first ||= input;
    }
    const box = this.form.querySelector("#form-error");
    if (general.length) { box.textContent = general.join("; "); box.hidden = false; }
    if (first) first.focus();
  }

  // Starts the form's settings; resolves true once started, false when refused (the form
  // then names the fields the server rejected).
  async submit() {
    this.clearErrors();
    const button = this.form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const run = await api(urls.runs(), { method: "POST", body: this.values() });
      this.onStarted(run);
      return true;
    } catch (error) {
      if (error instanceof ApiError && error.status === 422) this.showErrors(error.detail);
      else this.showErrors(error.message);
      return false;
    } finally {
      button.disabled = false;
    }
  }
}
