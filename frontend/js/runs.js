// The runs list: the saved runs with their status, filterable and sortable, and what can be
// done to them (open, stop, delete, export, compare); import adds a run from a file.
//
// The server pages the list (newest first, PAGE runs at a time, each a small fixed projection)
// and filters it (status, and the search box: name, id, task, model, method); "Show more" asks
// for the next page. The 3 s poll sends the list's ETag back, so while nothing changed it costs
// a 304 and no redraw.
import { api, ApiError, download, getJson } from "./api.js";
import { ALL, isActive } from "./statuses.js";
import * as urls from "./urls.js";

const PAGE = 200; // runs per page (the server's default)
const COLUMNS_KEY = "sparsescope.runColumns"; // localStorage: the chosen extra columns
const MAX_EXTRA_COLUMNS = 8; // the server's limit
const COLUMN_PATTERN = /^(config|summary)\.[A-Za-z_][A-Za-z0-9_]{0,63}$/;
// Offered in the Columns box (any other `config.<key>` or `summary.<key>` may be typed).
const SUGGESTED_COLUMNS = [
  ...["lr", "epochs", "batch_size", "seed", "optimizer", "weight_decay", "drop_fraction",
    "interval_steps", "end_fraction", "distribution", "schedule", "init"].map((key) => `config.${key}`),
  ...["steps", "final_loss", "final_test_accuracy", "best_test_accuracy", "itop_rate"].map((key) => `summary.${key}`),
];
const TAG_PREFIX = "tag:"; // a filter `tag:x` asks for the runs tagged x exactly

// The chosen extra columns, as valid keys (what the browser kept may be anything).
function loadColumns() {
  try {
    const kept = JSON.parse(localStorage.getItem(COLUMNS_KEY) || "[]");
    return Array.isArray(kept) ? [...new Set(kept.filter((key) => COLUMN_PATTERN.test(key)))].slice(0, MAX_EXTRA_COLUMNS) : [];
  } catch {
    return [];
  }
}

// A chosen column's value as a cell shows it.
function columnText(value) {
  if (value === undefined || value === null) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString("en") : String(Number(value.toPrecision(4)));
  return String(value);
}
const MAX_PAGE = 500; // the most one request may ask for
const SEARCH_DELAY_MS = 250;

// The next page's address in a Link header (RFC 8288), or null.
function nextLink(headers) {
  const match = /<([^>]*)>\s*;\s*rel="next"/.exec(headers.get("Link") || "");
  return match ? match[1] : null;
}

// What a run used: its stored settings (every method default resolved, the model a script
// trained), else, for runs recorded before settings were, the config it was started with.
export function usedSettings(run) {
  return run.settings || run.config || {};
}

// "digits · mlp [64, 64]", or only the model for a script's own data ("custom: Net (…)").
export function modelText(run) {
  const used = usedSettings(run);
  let model = used.model ?? "";
  if (!run.settings && Array.isArray(used.hidden)) model = `${model} [${used.hidden.join(", ")}]`;
  return [used.task, model].filter(Boolean).join(" · ") || "–";
}

function densityText(density) {
  if (typeof density !== "number") return "–";
  return `${(density * 100).toFixed(density < 0.01 ? 1 : 0)}%`;
}

const COLUMNS = [
  ["status", "Status", (run) => run.status],
  ["name", "Name", (run) => run.name.toLowerCase()],
  ["task", "Task", (run) => modelText(run)],
  ["method", "Method", (run) => usedSettings(run).method ?? ""],
  ["density", "Density", (run) => usedSettings(run).density ?? -1],
  ["best", "Best acc.", (run) => run.summary?.best_test_accuracy ?? -1],
  ["age", "Age", (run) => -run.created_at],
];

// The sort key of a row under `key`: a fixed column's, or a chosen column's value ("col:…");
// a run without that value sorts last either way.
function sortValue(key, run) {
  if (key.startsWith("col:")) {
    const value = run.columns?.[key.slice(4)];
    return value === undefined || value === null ? null : value;
  }
  const column = COLUMNS.find(([name]) => name === key) || COLUMNS[COLUMNS.length - 1];
  return column[2](run);
}

export function age(seconds) {
  const delta = Math.max(0, Date.now() / 1000 - seconds);
  if (delta < 60) return `${Math.round(delta)} s`;
  if (delta < 3600) return `${Math.round(delta / 60)} min`;
  if (delta < 86400) return `${Math.round(delta / 3600)} h`;
  return `${Math.round(delta / 86400)} d`;
}

function button(text, label, onClick, className = "") {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.setAttribute("aria-label", label);
  if (className) element.className = className;
  element.addEventListener("click", onClick);
  return element;
}

export class RunsList {
  constructor({ onOpen, onStopped, onDeleted, onSelection, message, onClone = null }) {
    this.runs = [];
    this.wanted = PAGE; // rows asked for: a page, and another for each "Show more"
    this.total = 0; // runs matching the filters, loaded or not
    this.listed = null; // { url, etag } of the rows shown: a poll asks whether they changed
    this.writerBusy = new Set(); // runs whose Delete was refused (409): their row offers a forced one
    this.repeated = new Set(); // names more than one loaded row has: those rows show their id
    this.ticket = 0; // the newest refresh: an older answer that lands later is dropped
    this.sort = { key: "age", descending: false };
    this.selected = new Set();
    this.onOpen = onOpen;
    this.onStopped = onStopped;
    this.onDeleted = onDeleted;
    this.onSelection = onSelection;
    this.onClone = onClone;
    this.message = message;
    this.extra = loadColumns();
    this.editing = null; // the id of the run whose labels are being edited: the row stays put
    this.body = document.getElementById("runs-body");
    this.filter = document.getElementById("runs-filter");
    this.statusFilter = document.getElementById("runs-status-filter");
    // The filter offers the statuses of statuses.js, whatever the page's markup lists.
    this.statusFilter.replaceChildren(new Option("all", ""), ...ALL.map((status) => new Option(status, status)));
    // Filtering is the server's: a new filter asks for its first page.
    this.filter.addEventListener("input", () => {
      clearTimeout(this.searchTimer);
      this.searchTimer = setTimeout(() => this.refilter(), SEARCH_DELAY_MS);
    });
    this.statusFilter.addEventListener("change", () => this.refilter());
    this.paging = Object.assign(document.createElement("p"), { id: "runs-paging", className: "hint" });
    this.count = Object.assign(document.createElement("span"), { id: "runs-count" });
    this.more = button(`Show ${PAGE} more`, "Show more runs", () => { this.wanted += PAGE; this.refresh(); });
    this.more.id = "runs-more";
    this.paging.append(this.count, " ", this.more);
    document.getElementById("runs-table").after(this.paging);
    for (const header of document.querySelectorAll("#runs-table th[data-sort] button")) {
      header.addEventListener("click", () => {
        const key = header.parentElement.dataset.sort;
        this.sort = { key, descending: this.sort.key === key ? !this.sort.descending : false };
        this.render();
      });
    }
    document.getElementById("import-file").addEventListener("change", (event) => this.importFile(event.target));
    this.bindColumns();
  }

  // The Columns box: comma-separated `config.<key>` / `summary.<key>`, kept in this browser.
  bindColumns() {
    const input = document.getElementById("runs-columns");
    const keys = document.getElementById("runs-column-keys");
    keys.replaceChildren(...SUGGESTED_COLUMNS.map((key) => new Option(key, key)));
    input.value = this.extra.join(", ");
    input.addEventListener("change", () => {
      const asked = input.value.split(",").map((key) => key.trim()).filter(Boolean);
      const bad = asked.filter((key) => !COLUMN_PATTERN.test(key));
      if (bad.length || asked.length > MAX_EXTRA_COLUMNS) {
        this.message(bad.length ? `Not a column: ${bad.join(", ")} (config.<key> or summary.<key>)`
          : `At most ${MAX_EXTRA_COLUMNS} columns.`);
        return;
      }
      this.extra = [...new Set(asked)];
      input.value = this.extra.join(", ");
      try { localStorage.setItem(COLUMNS_KEY, JSON.stringify(this.extra)); } catch { /* kept for this page */ }
      if (this.sort.key.startsWith("col:") && !this.extra.includes(this.sort.key.slice(4))) this.sort = { key: "age", descending: false };
      this.message("");
      this.refilter();
    });
  }

  // The table's header: the fixed columns, then one per chosen column (sortable too).
  renderHeader() {
    const row = document.querySelector("#runs-table thead tr");
    for (const old of row.querySelectorAll("th.extra")) old.remove();
    const actions = row.lastElementChild;
    for (const key of this.extra) {
      const th = document.createElement("th");
      th.scope = "col";
      th.className = "extra";
      th.dataset.sort = `col:${key}`;
      const sortButton = button(key, `Sort by ${key}`, () => {
        const sortKey = `col:${key}`;
        this.sort = { key: sortKey, descending: this.sort.key === sortKey ? !this.sort.descending : false };
        this.render();
      });
      th.append(sortButton);
      row.insertBefore(th, actions);
    }
  }

  refilter() {
    this.wanted = PAGE;
    this.refresh();
  }

  // The list's address for the filters on screen.
  address() {
    const typed = this.filter.value.trim();
    const tagged = typed.toLowerCase().startsWith(TAG_PREFIX);
    return urls.runList({ limit: Math.min(this.wanted, MAX_PAGE), status: this.statusFilter.value,
                          q: tagged ? "" : typed, tag: tagged ? typed.slice(TAG_PREFIX.length).trim() : "",
                          columns: this.extra.join(",") });
  }

  // `reachable` turns false when the server does not answer at all (stopped, network gone).
  async refresh() {
    const ticket = ++this.ticket;
    const url = this.address();
    let rows;
    let listed;
    try {
      const etag = this.listed?.url === url ? this.listed.etag : null;
      const answer = await getJson(url, { etag });
      if (ticket !== this.ticket) return this.runs;
      if (answer.status !== 304) {
        rows = answer.body;
        listed = { url, etag: answer.headers.get("ETag") };
        this.total = Number(answer.headers.get("X-Total-Count")) || answer.body.length;
        let next = nextLink(answer.headers);
        while (next && rows.length < this.wanted) { // past MAX_PAGE: the further pages
          const page = await getJson(next);
          rows = rows.concat(page.body);
          next = nextLink(page.headers);
        }
        this.hasMore = Boolean(next);
      }
      if (this.reachable === false) this.message("");
      this.reachable = true;
    } catch (error) {
      this.reachable = !(error instanceof TypeError); // fetch rejects with TypeError when unreachable
      this.message(this.reachable ? `Could not list runs: ${error.message}`
        : "The server does not answer (stopped?): retrying now and then.");
      return this.runs;
    }
    if (ticket !== this.ticket) return this.runs;
    if (rows) {
      this.runs = rows;
      this.listed = listed;
    }
    this.render();
    return this.runs;
  }

  // Whether run `id` exists, asked of the server (it may be on a page not loaded); null when
  // the server does not answer. A link to a deleted run then says so, with no failed request.
  async exists(id) {
    if (this.runs.some((run) => run.id === id)) return true;
    try {
      const found = await api(urls.runList({ q: id, limit: MAX_PAGE }));
      return found.some((run) => run.id === id);
    } catch (error) {
      if (error instanceof TypeError) { this.reachable = false; return null; }
      return false;
    }
  }

  // The loaded rows in the chosen order (the server's is newest first).
  visible() {
    const rows = [...this.runs];
    rows.sort((a, b) => {
      const x = sortValue(this.sort.key, a);
      const y = sortValue(this.sort.key, b);
      if (x === null || y === null) return x === y ? 0 : x === null ? 1 : -1;
      const order = x < y ? -1 : x > y ? 1 : 0;
      return this.sort.descending ? -order : order;
    });
    return rows;
  }

  render() {
    if (this.editing && this.body.querySelector(`tr[data-run-id="${this.editing}"] .labels-editor`)) {
      this.renderPending = true; // redrawn when the edit ends: typing is never thrown away
      return;
    }
    this.renderPending = false;
    if (this.headerFor !== this.extra.join(",")) {
      this.headerFor = this.extra.join(",");
      this.renderHeader();
    }
    for (const header of document.querySelectorAll("#runs-table th[data-sort]")) {
      const sorted = header.dataset.sort === this.sort.key;
      header.setAttribute("aria-sort", sorted ? (this.sort.descending ? "descending" : "ascending") : "none");
    }
    const rows = this.visible();
    const filtered = Boolean(this.filter.value.trim() || this.statusFilter.value);
    document.getElementById("runs-empty").hidden = rows.length > 0 || filtered;
    this.count.textContent = rows.length === 0 && filtered ? "No run matches the filter."
      : rows.length < this.total ? `${rows.length} of ${this.total.toLocaleString("en")} runs shown.` : "";
    this.more.hidden = !this.hasMore;
    const signature = JSON.stringify([this.selected.size, rows.map((run) =>
      [run.id, run.status, run.name, run.summary?.best_test_accuracy, run.has_model,
        Boolean(run.settings), run.unreadable, this.selected.has(run.id), this.writerBusy.has(run.id),
        run.tags, run.note, run.columns]), this.extra]);
    if (signature === this.signature) {
      // Nothing but the ages changed: update them in place, so keyboard focus stays put.
      rows.forEach((run, index) => {
        const cell = this.body.children[index]?.children[7];
        if (cell) cell.textContent = age(run.created_at);
      });
      return;
    }
    this.signature = signature;
    const seen = new Set();
    this.repeated = new Set();
    for (const run of rows) {
      if (seen.has(run.name)) this.repeated.add(run.name);
      seen.add(run.name);
    }
    const focused = document.activeElement && this.body.contains(document.activeElement)
      ? document.activeElement.getAttribute("aria-label") : null;
    this.body.replaceChildren(...rows.map((run) => this.row(run)));
    if (focused) {
      const again = [...this.body.querySelectorAll("[aria-label]")].find((e) => e.getAttribute("aria-label") === focused);
      if (again) again.focus();
    }
    this.onSelection(this.selected);
  }

  row(run) {
    const tr = document.createElement("tr");
    tr.dataset.runId = run.id;
    tr.dataset.status = run.status;
    const pick = document.createElement("input");
    pick.type = "checkbox";
    pick.checked = this.selected.has(run.id);
    pick.setAttribute("aria-label", `compare ${run.name}`);
    pick.addEventListener("change", () => {
      if (pick.checked) this.selected.add(run.id); else this.selected.delete(run.id);
      this.onSelection(this.selected);
    });
    const best = run.summary?.best_test_accuracy;
    const cells = [
      pick,
      Object.assign(document.createElement("span"), { className: "badge", textContent: run.status }),
      this.nameCell(run),
      modelText(run),
      usedSettings(run).method ?? "–",
      densityText(usedSettings(run).density),
      best === null || best === undefined ? "–" : `${(best * 100).toFixed(1)}%`,
      age(run.created_at),
      ...this.extra.map((key) => columnText(run.columns?.[key])),
    ];
    cells[1].dataset.status = run.status;
    for (const content of cells) {
      const td = document.createElement("td");
      td.append(content);
      tr.append(td);
    }
    tr.children[2].className = "name";
    tr.children[2].title = `${run.id}${run.error ? ` · ${run.error}` : ""}`;
    const cell = document.createElement("td");
    cell.className = "actions";
    const actions = document.createElement("div");
    actions.className = "buttons";
    cell.append(actions);
    actions.append(button("Open", `Open ${run.name}`, () => this.onOpen(run)));
    if (isActive(run.status)) actions.append(button("Stop", `Stop run ${run.name}`, () => this.stop(run)));
    actions.append(button("Edit", `Edit name, tags and note of ${run.name}`, () => this.edit(run, tr)));
    if (this.onClone) actions.append(button("Clone", `Clone the settings of ${run.name} into New run`, () => this.onClone(run)));
    actions.append(button("Export", `Export ${run.name}`, () => this.exportRun(run)));
    // The trained weights and masks (a .pt file), offered only where the server stored one.
    if (run.has_model) {
      actions.append(button("Model", `Download the trained model of ${run.name}`, () => this.downloadModel(run)));
    }
    if (this.writerBusy.has(run.id)) {
      // Refused once (409: a live script or CLI writes it): deleting now also stops that writer.
      actions.append(button("Delete anyway", `Delete ${run.name} and stop its writer`,
                            () => this.remove(run, { force: true }), "danger"));
      tr.append(cell);
      return tr;
    }
    const remove = button("Delete", `Delete ${run.name}`, () => {
      if (remove.dataset.armed) { this.remove(run); return; }
      // Two clicks, no modal: deleting loses the recorded data.
      remove.dataset.armed = "1";
      remove.textContent = "Confirm delete";
      setTimeout(() => { delete remove.dataset.armed; remove.textContent = "Delete"; }, 4000);
    }, "danger");
    actions.append(remove);
    tr.append(cell);
    return tr;
  }

  // The name cell: the name (its id beside it where names repeat), the tags as buttons that
  // filter the list to that tag, and the note's start.
  nameCell(run) {
    const cell = nameCell(run, this.repeated.has(run.name));
    if (!run.tags?.length && !run.note) return cell;
    const wrap = document.createElement("span");
    wrap.append(cell);
    if (run.tags?.length) {
      const tags = Object.assign(document.createElement("span"), { className: "tags" });
      for (const tag of run.tags) {
        const chip = button(tag, `Show runs tagged ${tag}`, () => {
          this.filter.value = `${TAG_PREFIX}${tag}`;
          this.refilter();
        }, "tag");
        tags.append(chip);
      }
      wrap.append(" ", tags);
    }
    if (run.note) {
      wrap.append(Object.assign(document.createElement("span"), { className: "note", textContent: run.note, title: run.note }));
    }
    return wrap;
  }

  // Edit a run's name, tags and note in its row; Save sends only what changed.
  edit(run, tr) {
    if (this.editing && this.editing !== run.id) this.endEdit();
    this.editing = run.id;
    const cell = tr.children[2];
    const form = Object.assign(document.createElement("form"), { className: "labels-editor" });
    const field = (label, element) => {
      const wrap = document.createElement("label");
      wrap.append(label, element);
      return wrap;
    };
    const name = Object.assign(document.createElement("input"), { value: run.name, required: true, maxLength: 1000 });
    const tags = Object.assign(document.createElement("input"), {
      value: (run.tags || []).join(", "), placeholder: "baseline, seed 0" });
    const note = Object.assign(document.createElement("textarea"), { rows: 2, maxLength: 4000 });
    note.value = run.note || "";
    const error = Object.assign(document.createElement("span"), { className: "field-error" });
    const save = Object.assign(document.createElement("button"), { type: "submit", textContent: "Save", className: "primary" });
    const cancel = button("Cancel", `Cancel editing ${run.name}`, () => this.endEdit());
    form.append(field("Name", name), field("Tags", tags), field("Note", note), save, cancel, error);
    form.addEventListener("keydown", (event) => { if (event.key === "Escape") this.endEdit(); });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {};
      const wantedTags = tags.value.split(",").map((tag) => tag.trim()).filter(Boolean);
      if (name.value !== run.name) body.name = name.value;
      if (JSON.stringify(wantedTags) !== JSON.stringify(run.tags || [])) body.tags = wantedTags;
      if (note.value !== (run.note || "")) body.note = note.value;
      if (!Object.keys(body).length) { this.endEdit(); return; }
      save.disabled = true;
      try {
        const saved = await api(urls.run(run.id), { method: "PATCH", body });
        this.runs = this.runs.map((row) => (row.id === run.id
          ? { ...row, name: saved.name, tags: saved.tags, note: saved.note } : row));
        this.message(`Saved ${saved.name}`);
        this.endEdit();
        this.refresh();
      } catch (failure) {
        save.disabled = false;
        // The server names the field: a 422's list of { loc, msg }, else its text.
        error.textContent = Array.isArray(failure.detail)
          ? failure.detail.map((item) => item.msg).join("; ") : failure.message;
      }
    });
    cell.replaceChildren(form);
    name.focus();
  }

  endEdit() {
    this.editing = null;
    this.signature = null;
    this.render();
  }

  async stop(run) {
    try {
      const stopped = await api(urls.stop(run.id), { method: "POST" });
      this.onStopped(stopped);
    } catch (error) {
      this.message(`Stop failed: ${error.message}`);
    }
    this.refresh();
  }

  async remove(run, { force = false } = {}) {
    try {
      await api(urls.deleteRun(run.id, { force }), { method: "DELETE" });
      this.writerBusy.delete(run.id);
      this.selected.delete(run.id);
      // Gone from the list at once, not at the next answer; a listing asked for before the
      // delete and answered after it would show the row again, so it is dropped (ticket).
      this.ticket += 1;
      this.runs = this.runs.filter((row) => row.id !== run.id);
      this.total = Math.max(0, (this.total || 1) - 1);
      this.render();
      this.onDeleted(run);
      this.message(`Deleted ${run.name}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 409 && !force) {
        // The server names the writer; the row now offers the forced delete.
        this.writerBusy.add(run.id);
        this.message(`Not deleted: ${error.message} “Delete anyway” deletes it and stops that writer.`);
        this.render();
      } else {
        this.message(`Delete failed: ${error.message}`);
      }
    }
    this.refresh();
  }

  // Fetches a file (with the token header, which a plain link could not send) and saves it.
  async save(path) {
    const { blob, filename } = await download(path);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    return filename;
  }

  async downloadModel(run) {
    try {
      this.message(`Saved the model of ${run.name} as ${await this.save(urls.model(run.id))}`);
    } catch (error) {
      this.message(`Model download failed: ${error.message}`);
    }
  }

  async exportRun(run) {
    try {
      const filename = await this.save(urls.exportRun(run.id));
      this.message(`Exported ${run.name} as ${filename}`);
    } catch (error) {
      const missing = error.status === 404 || error.status === 405;
      this.message(missing && !String(error.detail || "").includes(run.id)
        ? "This server cannot export runs yet." : `Export failed: ${error.message}`);
    }
  }

  async importFile(input) {
    const file = input.files && input.files[0];
    if (!file) return;
    try {
      const bytes = await file.arrayBuffer();
      const run = await api(urls.importRun(), { method: "POST", body: bytes, raw: true });
      const same = Array.isArray(run.info?.same_as) ? run.info.same_as : [];
      this.message(same.length
        ? `Imported ${run.name} as ${run.id}: this recording was already here (${same.join(", ")})`
        : `Imported ${run.name}`);
      await this.refresh();
    } catch (error) {
      const missing = error.status === 404 || error.status === 405;
      this.message(missing ? "This server cannot import runs yet." : `Import failed: ${error.message}`);
    } finally {
      input.value = "";
    }
  }
}

export const SORT_COLUMNS = COLUMNS.map(([key, title]) => [key, title]);

/** The run's name; a stored row the server could not read says so (it can still be deleted). */
// The name, and where another loaded row has the same name, the run's id beside it (two
// imports of one file are otherwise indistinguishable).
function nameCell(run, repeated = false) {
  if (!run.unreadable && !repeated) return run.name;
  if (!run.unreadable) {
    const cell = document.createElement("span");
    const id = Object.assign(document.createElement("code"), { className: "run-id", textContent: run.id });
    cell.append(`${run.name} `, id);
    return cell;
  }
  const cell = document.createElement("span");
  const flag = Object.assign(document.createElement("span"),
    { className: "badge unreadable", textContent: "unreadable", title: run.unreadable });
  cell.append(`${run.name} `, flag);
  return cell;
}
