"""backend/js_bundle.py: the bundle of a module graph does in chromium what the modules do
(the same values, the same evaluation order, import.meta.url resolving the same), and the
forms it does not support are refused when it is built, naming the module. The dashboard's own
bundle is what every other browser test runs."""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
from pathlib import Path

import pytest

from backend.js_bundle import BundleError, bundle

pytestmark = pytest.mark.browser

# Every form the linker supports, each module noting when it ran.
GRAPH = {
    "main.js": """
import { twice, Counter as Tally, later, FIRST, SECOND } from "./shapes.js";
import * as base from "./base.js";
import { label } from "./label.js";
(globalThis.order ??= []).push("main");
const tally = new Tally();
tally.add(3);
export const result = {
  twice: twice(21), total: tally.total, base: base.ONE + base.offset(1), label: label("x"),
  pair: [FIRST, SECOND], names: Object.keys(base).sort(),
  readOnly: (() => { try { base.ONE = 2; return false; } catch { return base.ONE === 1; } })(),
  folder: new URL(".", import.meta.url).pathname.endsWith("/js/"),
  sibling: new URL("../vendor/x.js", import.meta.url).pathname.endsWith("/vendor/x.js"),
};
later().then((value) => { result.later = value; globalThis.result = result; });
""",
    "shapes.js": """
import { ONE } from "./base.js";
import { label as name } from "./label.js";
(globalThis.order ??= []).push("shapes");
export function twice(value) { return 2 * value * ONE; }
export async function later() { return name("later"); }
export class Counter {
  constructor() { this.total = 0; }
  add(value) { this.total += value; }
}
export const [FIRST, SECOND] = ["a", "b"];
""",
    "base.js": """
(globalThis.order ??= []).push("base");
const ONE = 1;
function offset(value) { return value + 10; }
export { ONE, offset };
""",
    "label.js": """
import {
  ONE,
} from "./base.js";
(globalThis.order ??= []).push("label");
export const label = (text) => `${text}:${ONE}`;
""",
}


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP (modules do not load from file://): returns (folder, url)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def write_graph(folder: Path, graph: dict[str, str]) -> Path:
    js = folder / "js"
    js.mkdir(exist_ok=True)
    for name, source in graph.items():
        (js / name).write_text(source)
    return js


def run_page(browser, url: str) -> tuple[dict, list[str]]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("window.result && window.result.later", timeout=10_000)
    answer = page.evaluate("({ result: window.result, order: window.order })")
    page.close()
    return answer, errors


def test_the_bundle_does_what_the_modules_do(browser, served):
    folder, url = served
    js = write_graph(folder, GRAPH)
    linked = bundle(js, "main.js")
    (js / "bundle.js").write_bytes(linked.code)
    (js / "bundle.js.map").write_bytes(linked.source_map)
    for name, script in (("modules", "main.js"), ("bundle", "bundle.js")):
        (folder / f"{name}.html").write_text(f'<script type="module" src="js/{script}"></script>')
    modules, module_errors = run_page(browser, f"{url}/modules.html")
    bundled, bundle_errors = run_page(browser, f"{url}/bundle.html")
    assert module_errors == [] and bundle_errors == []
    assert modules == bundled, json.dumps([modules, bundled])
    assert bundled["order"] == ["base", "label", "shapes", "main"]  # each after its imports
    assert bundled["result"] == {
        "twice": 42, "total": 3, "base": 12, "label": "x:1", "pair": ["a", "b"],
        "names": ["ONE", "offset"], "readOnly": True, "folder": True, "sibling": True,
        "later": "later:1"}


@pytest.mark.parametrize(("graph", "message"), [
    ({"main.js": 'import { missing } from "./base.js";', "base.js": "export const there = 1;"},
     "main.js imports 'missing' from base.js, which does not export it"),
    ({"main.js": 'import { a } from "./a.js";', "a.js": 'import { b } from "./main.js";\n'
                                                        "export const a = 1;"},
     "import cycle: main.js → a.js → main.js"),
    ({"main.js": 'import { a } from "./gone.js";'}, "main.js imports gone.js, which is not"),
    ({"main.js": "export let counter = 0;"}, "main.js: unsupported module syntax: 'export let"),
    ({"main.js": "export default 1;"}, "main.js: unsupported module syntax: 'export default"),
    ({"main.js": 'import thing from "./base.js";', "base.js": ""},
     "main.js: unsupported module syntax: 'import thing"),
    ({"main.js": 'import { a } from "https://example.com/a.js";'},
     "main.js: unsupported module syntax"),
    ({"main.js": "export const { a = 1 } = {};"}, "main.js: cannot read the exported pattern"),
    ({"main.js": "const a = await fetch('/');"}, "main.js: top-level await"),
])
def test_what_it_cannot_link_is_refused_naming_the_module(tmp_path, graph, message):
    js = write_graph(tmp_path, graph)
    with pytest.raises(BundleError, match=re.escape(message)):
        bundle(js, "main.js")


def test_the_dashboards_modules_link():
    """What the server does when it starts: every module that app.js reaches, in one file."""
    js = Path(__file__).resolve().parents[2] / "frontend" / "js"
    linked = bundle(js, "app.js").code.decode()
    reached = {line.removeprefix("// ---- ") for line in linked.splitlines()
               if line.startswith("// ---- ")}
    assert reached == {path.name for path in js.glob("*.js")}


BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def decode_mappings(mappings: str) -> dict[int, tuple[int, int]]:
    """Bundle line → (source index, source line) of each line's first segment."""
    found, source, line = {}, 0, 0
    for number, segments in enumerate(mappings.split(";")):
        if not segments:
            continue
        values, value, shift = [], 0, 0
        for char in segments.split(",")[0]:
            digit = BASE64.index(char)
            value |= (digit & 31) << shift
            shift += 5
            if not digit & 32:
                values.append(-(value >> 1) if value & 1 else value >> 1)
                value, shift = 0, 0
        source, line = source + values[1], line + values[2]
        found[number] = (source, line)
    return found


def test_the_source_map_points_each_line_at_its_module_file(tmp_path):
    """A debugger shows the module files: every line of a module maps to the same line of its
    file (which the server serves beside the bundle)."""
    js = write_graph(tmp_path, GRAPH)
    linked = bundle(js, "main.js")
    source_map = json.loads(linked.source_map)
    assert source_map["version"] == 3 and source_map["file"] == "bundle.js"
    assert source_map["sources"] == ["base.js", "label.js", "shapes.js", "main.js"]
    lines = linked.code.decode().split("\n")
    assert lines[-2] == "//# sourceMappingURL=bundle.js.map"
    mapped = decode_mappings(source_map["mappings"])
    def linking_lines(text: str) -> set[int]:
        """The lines of a module's imports (one or several lines each) and export lists."""
        found, inside = set(), False
        for number, line in enumerate(text.split("\n")):
            inside = inside or line.startswith(("import", "export {"))
            if inside:
                found.add(number)
                inside = not (' from "' in line or line.startswith("export {"))
        return found

    checked = 0
    for number, (source, line) in mapped.items():
        text = GRAPH[source_map["sources"][source]]
        original = text.split("\n")[line]
        bundled = lines[number]
        if line in linking_lines(text):  # left blank: the lines below keep their numbers
            assert bundled == ""
        else:
            assert bundled == original.removeprefix("export "), (number, bundled, original)
            checked += 1
    assert checked >= 20
    # Every line of every module is mapped once.
    assert sorted(mapped.values()) == sorted(
        (index, line) for index, name in enumerate(source_map["sources"])
        for line in range(len(GRAPH[name].split("\n"))))


def test_source_map_numbers_are_base64_vlq():
    """The format's own examples (what browsers decode), not only our decoder's reading."""
    from backend.js_bundle import _vlq

    assert [_vlq(value) for value in (0, 1, -1, 15, 16, -16, 123, 1000)] == [
        "A", "C", "D", "e", "gB", "hB", "2H", "w+B"]
