// Names recorded by a run (layers, metrics, runs) are data, never markup.
//
// Plotly renders a subset of HTML in titles, legends, hover labels and axis titles (<a href>,
// <span style>, <b>, <br>): a layer named `<a href="https://evil.example">` would become a live
// link. Every name passes through `plain` before Plotly sees it: with `<` and `>` escaped no tag
// can start, and Plotly turns the three entities back into the characters, so the name reads
// exactly as recorded (quotes need no escaping outside a tag). In the DOM names go through
// textContent only.

const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;" };

export function plain(value) {
  return String(value ?? "").replace(/[&<>]/g, (character) => ENTITIES[character]);
}
