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
  constructor({ onOpen, onStopped, onDeleted, onSelection, message }) {
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
    this.message = message;
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
  }

  refilter() {
    this.wanted = PAGE;
    this.refresh();
  }

  // The list's address for the filters on screen.
  address() {
    return urls.runList({ limit: Math.min(this.wanted, MAX_PAGE), status: this.statusFilter.value,
                          q: this.filter.value.trim() });
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
    const [, , key] = COLUMNS.find(([name]) => name === this.sort.key);
    const rows = [...this.runs];
    rows.sort((a, b) => {
      const x = key(a);
      const y = key(b);
      const order = x < y ? -1 : x > y ? 1 : 0;
      return this.sort.descending ? -order : order;
    });
    return rows;
  }

  render() {
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
        Boolean(run.settings), run.unreadable, this.selected.has(run.id), this.writerBusy.has(run.id)])]);
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
      nameCell(run, this.repeated.has(run.name)),
      modelText(run),
      usedSettings(run).method ?? "–",
      densityText(usedSettings(run).density),
      best === null || best === undefined ? "–" : `${(best * 100).toFixed(1)}%`,
      age(run.created_at),
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
