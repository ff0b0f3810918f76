// The runs list: every saved run with its status, filterable and sortable, and what can be
// done to it (open, stop, delete, export, compare); import adds a run from a file.
import { api, download } from "./api.js";
import { ALL, isActive } from "./statuses.js";
import * as urls from "./urls.js";

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
    this.filter.addEventListener("input", () => this.render());
    this.statusFilter.addEventListener("change", () => this.render());
    for (const header of document.querySelectorAll("#runs-table th[data-sort] button")) {
      header.addEventListener("click", () => {
        const key = header.parentElement.dataset.sort;
        this.sort = { key, descending: this.sort.key === key ? !this.sort.descending : false };
        this.render();
      });
    }
    document.getElementById("import-file").addEventListener("change", (event) => this.importFile(event.target));
  }

  // `reachable` turns false when the server does not answer at all (stopped, network gone).
  async refresh() {
    try {
      this.runs = await api(urls.runs());
      if (this.reachable === false) this.message("");
      this.reachable = true;
    } catch (error) {
      this.reachable = !(error instanceof TypeError); // fetch rejects with TypeError when unreachable
      this.message(this.reachable ? `Could not list runs: ${error.message}`
        : "The server does not answer (stopped?): retrying now and then.");
      return this.runs;
    }
    for (const id of [...this.selected]) if (!this.runs.some((run) => run.id === id)) this.selected.delete(id);
    this.render();
    return this.runs;
  }

  visible() {
    const text = this.filter.value.trim().toLowerCase();
    const status = this.statusFilter.value;
    const [, , key] = COLUMNS.find(([name]) => name === this.sort.key);
    const rows = this.runs.filter((run) => (!status || run.status === status) && (!text ||
      [run.name, run.id, modelText(run), usedSettings(run).method, run.status]
        .some((value) => String(value).toLowerCase().includes(text))));
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
    const signature = JSON.stringify([this.selected.size, rows.map((run) =>
      [run.id, run.status, run.name, run.summary?.best_test_accuracy, run.has_model,
        Boolean(run.settings), run.unreadable, this.selected.has(run.id)])]);
    if (signature === this.signature) {
      // Nothing but the ages changed: update them in place, so keyboard focus stays put.
      rows.forEach((run, index) => {
        const cell = this.body.children[index]?.children[7];
        if (cell) cell.textContent = age(run.created_at);
      });
      return;
    }
    this.signature = signature;
    const focused = document.activeElement && this.body.contains(document.activeElement)
      ? document.activeElement.getAttribute("aria-label") : null;
    this.body.replaceChildren(...rows.map((run) => this.row(run)));
    if (focused) {
      const again = [...this.body.querySelectorAll("[aria-label]")].find((e) => e.getAttribute("aria-label") === focused);
      if (again) again.focus();
    }
    document.getElementById("runs-empty").hidden = rows.length > 0;
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
      nameCell(run),
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

  async remove(run) {
    try {
      await api(urls.run(run.id), { method: "DELETE" });
      this.selected.delete(run.id);
      this.onDeleted(run);
      this.message(`Deleted ${run.name}`);
    } catch (error) {
      this.message(`Delete failed: ${error.message}`);
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
      this.message(`Imported ${run.name}`);
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
function nameCell(run) {
  if (!run.unreadable) return run.name;
  const cell = document.createElement("span");
  const flag = Object.assign(document.createElement("span"),
    { className: "badge unreadable", textContent: "unreadable", title: run.unreadable });
  cell.append(`${run.name} `, flag);
  return cell;
}
