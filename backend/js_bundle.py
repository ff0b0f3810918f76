"""The dashboard's ES modules as one file, linked when the app starts.

A page that loads its code as 27 module files asks the browser process for each of them (a
request, a cache lookup, a module record, one after another per import level). Inside a
notebook every inline view is such a page in one renderer: measured on plain pages (seven
frames, the same code), 0.79-1.04 s to the last frame's script as modules, 0.52-0.74 s as one
file. So the page loads one file, built here from the modules as they are; the module files
are still served (a test or a user's console imports `window.sparsescope.modules + "x.js"`).

What the modules do is what this linker supports, and it refuses anything else when the app
is created (a server that starts has a bundle that links):
- top-level `import { a, b as c } from "./x.js";` and `import * as x from "./x.js";` of a
  module in the same folder, never a cycle;
- top-level `export function|async function|class|const NAME`, `export const [a, b] = …` or
  `export const { a, b: c } = …` (plain names, no defaults or nesting), and
  `export { a, b as c };`.
Each module becomes a function scope, evaluated in the order the browser evaluates an ES
module graph (depth first from the entry, each module after the modules it imports); its
imports become constants read from the exporters' namespace objects, its exports that
module's namespace. An imported name that its module does not export is an error here, as it
is a link error in the browser; a module-level `await` is refused (a plain function scope
cannot hold one). Bindings are read once, after the exporter ran: exports are never
reassigned (`export let` is refused), so that reads what a live binding would.
`import.meta.url` is the bundle's address, which sits in the modules' folder: relative URLs
built from it resolve as they did.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

NAME = r"[A-Za-z_$][\w$]*"
IMPORT = re.compile(
    rf'^import\s+(?:\{{(?P<names>[^}}]*)\}}|\*\s+as\s+(?P<namespace>{NAME}))\s+'
    rf'from\s+"\./(?P<path>[\w.-]+\.js)";[ \t]*$', re.M)
EXPORT_DECLARATION = re.compile(
    rf"^export\s+(?P<kind>async\s+function\*?|function\*?|class|const)\s+(?P<name>{NAME})", re.M)
EXPORT_PATTERN = re.compile(r"^export\s+const\s+(?P<pattern>\[[^\]]*\]|\{[^}]*\})\s*=", re.M)
EXPORT_LIST = re.compile(r"^export\s*\{(?P<names>[^}]*)\};?[ \t]*$", re.M)
# A module-level await (our modules' statements start at the line's start): a module's scope
# here is a plain function, where it cannot be.
TOP_LEVEL_AWAIT = re.compile(r"^(?:await\b|(?:const|let|var)\s[^=;]*=\s*await\b).*$", re.M)
# Any module-level import or export left once the supported forms are taken out.
LEFT_OVER = re.compile(r"^(?:import|export)\b.*$", re.M)


class BundleError(ValueError):
    """A module uses a form the linker does not support, or the graph does not link."""


def _pairs(names: str, where: str) -> list[tuple[str, str]]:
    """`a, b as c` → [(a, a), (b, c)]: (name in the exporter, name here)."""
    pairs = []
    for part in names.split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(rf"({NAME})(?:\s+as\s+({NAME}))?", part)
        if match is None:
            raise BundleError(f"{where}: cannot read the import or export list entry {part!r}")
        pairs.append((match.group(1), match.group(2) or match.group(1)))
    return pairs


class Module:
    """One module's source taken apart: what it imports, what it exports, its own code."""

    def __init__(self, name: str, source: str):
        self.name = name
        self.imports: list[tuple[str, str | None, list[tuple[str, str]]]] = []
        self.exports: dict[str, str] = {}  # exported name → local name

        def take_import(match: re.Match) -> str:
            path = match.group("path")
            if match.group("namespace"):
                self.imports.append((path, match.group("namespace"), []))
            else:
                self.imports.append((path, None, _pairs(match.group("names"), name)))
            return "\n" * match.group(0).count("\n")  # keep the lines where they were

        def take_declaration(match: re.Match) -> str:
            self.exports[match.group("name")] = match.group("name")
            return match.group(0).removeprefix("export").lstrip()

        def take_pattern(match: re.Match) -> str:
            pattern = match.group("pattern")
            for part in pattern[1:-1].split(","):
                part = part.strip()
                if not part:  # an array pattern's hole
                    continue
                local = part.split(":", 1)[-1].strip() if pattern[0] == "{" else part
                if not re.fullmatch(NAME, local):
                    raise BundleError(f"{name}: cannot read the exported pattern {pattern!r}")
                self.exports[local] = local
            return match.group(0).removeprefix("export").lstrip()

        def take_list(match: re.Match) -> str:
            for local, exported in _pairs(match.group("names"), name):
                self.exports[exported] = local
            return ""

        code = IMPORT.sub(take_import, source)
        code = EXPORT_DECLARATION.sub(take_declaration, code)
        code = EXPORT_PATTERN.sub(take_pattern, code)
        code = EXPORT_LIST.sub(take_list, code)
        waits = TOP_LEVEL_AWAIT.search(code)
        if waits:
            raise BundleError(f"{name}: top-level await is not supported: {waits.group(0)[:80]!r}")
        left = LEFT_OVER.search(code)
        if left:
            raise BundleError(f"{name}: unsupported module syntax: {left.group(0)[:80]!r}")
        self.code = code


def bundle(folder: Path, entry: str, map_name: str = "bundle.js.map") -> Linked:
    """The modules of `folder` that `entry` reaches, as one ES module (see the docstring), and
    its source map, to be served as `map_name` beside it: each module's lines are its file's
    lines, in the module files served from the same folder (a debugger shows those)."""
    modules: dict[str, Module] = {}
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in modules:
            return
        if name in visiting:
            cycle = " → ".join([*visiting[visiting.index(name):], name])
            raise BundleError(f"import cycle: {cycle}")
        path = folder / name
        if not path.is_file():
            importer = visiting[-1] if visiting else "the entry"
            raise BundleError(f"{importer} imports {name}, which is not in {folder.name}/")
        visiting.append(name)
        module = Module(name, path.read_text(encoding="utf-8"))
        for imported, _namespace, _names in module.imports:
            visit(imported)
        visiting.pop()
        modules[name] = module
        order.append(name)

    visit(entry)
    lines = ["// The dashboard's modules, linked by backend/js_bundle.py: one scope per module.",
             "const modules = Object.create(null);"]
    mapped: dict[int, tuple[int, int]] = {}  # bundle line → (module index, its line), from 0
    for index, name in enumerate(order):
        module = modules[name]
        bindings = []
        for imported, namespace, names in module.imports:
            source = f"modules[{json.dumps(imported)}]"
            if namespace:
                bindings.append(f"const {namespace} = {source};")
                continue
            for exported, local in names:
                if exported not in modules[imported].exports:
                    raise BundleError(f"{name} imports {exported!r} from {imported}, "
                                      "which does not export it")
                bindings.append(f"const {local} = {source}.{exported};")
        exports = ", ".join(f"{exported}: {local}" for exported, local in module.exports.items())
        lines += [f"// ---- {name}", f"modules[{json.dumps(name)}] = (() => {{ {' '.join(bindings)}"]
        for line_number, line in enumerate(module.code.split("\n")):
            mapped[len(lines)] = (index, line_number)
            lines.append(line)
        lines += [f"return Object.freeze({{ __proto__: null, {exports} }});", "})();"]
    lines.append(f"//# sourceMappingURL={map_name}")
    source_map = {"version": 3, "file": map_name.removesuffix(".map"), "sources": order,
                  "names": [], "mappings": _mappings(len(lines), mapped)}
    return Linked(("\n".join(lines) + "\n").encode(), json.dumps(source_map).encode())


class Linked(NamedTuple):
    code: bytes
    source_map: bytes  # source map v3: each module line to its file (served beside it)


BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _vlq(value: int) -> str:
    """One number in a source map's base64 VLQ."""
    value = (-value << 1) | 1 if value < 0 else value << 1
    digits = ""
    while True:
        digit, value = value & 31, value >> 5
        digits += BASE64[digit | (32 if value else 0)]
        if not value:
            return digits


def _mappings(count: int, mapped: dict[int, tuple[int, int]]) -> str:
    """One segment per mapped line (its start to the source line's start), fields relative to
    the segment before, as the format has them."""
    segments, source, line = [], 0, 0
    for number in range(count):
        if number not in mapped:
            segments.append("")
            continue
        index, original = mapped[number]
        segments.append("A" + _vlq(index - source) + _vlq(original - line) + "A")
        source, line = index, original
    return ";".join(segments)
