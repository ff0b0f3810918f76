// Names recorded by a run (layers, metrics, runs) are data, never markup.
//
// Plotly renders a subset of HTML in titles, legends, hover labels and axis titles (<a href>,
// <span style>, <b>, <br>): a layer named `<a href="https://evil.example">` would become a live
// link. Every name passes through `plain` before Plotly sees it; Plotly turns the entities back
// into the characters, so the name reads exactly as recorded. In the DOM names go through
// textContent only.

const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function plain(value) {
  return String(value ?? "").replace(/[&<>"']/g, (character) => ENTITIES[character]);
}

// A name inside a Plotly hovertemplate: escaped, and its `%{` can no longer start a placeholder.
export function plainTemplate(value) {
  return plain(value).replace(/%/g, "&#37;");
}
