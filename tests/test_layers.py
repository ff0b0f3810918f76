"""The layers import one way (engine ← store ← writer ← server) and nothing imports in a circle.

Read from the source (every `import`, function-level ones included), so an import hidden
inside a function counts like one at the top. `from package import name` counts as importing
`package.name` when that is a module, else `package` itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("dst_core", "backend", "sparsescope")
# Lower number = lower layer; a module may import its own layer and those below.
LAYERS = {"engine": 0, "store": 1, "writer": 2, "server": 3}
# What the engine (driver, algorithms, selection, events, analytics) must never load.
ENGINE_FORBIDDEN = ("pydantic", "sqlite3", "urllib", "http", "fastapi", "starlette", "uvicorn",
                    "subprocess", "multiprocessing", "socket")


def layer_of(module: str) -> str:
    if module.startswith("dst_core.store"):
        return "store"
    if module.startswith("dst_core.recording"):
        return "writer"
    if module.startswith(("backend", "sparsescope")):
        return "server"
    return "engine"


def module_files() -> dict[str, Path]:
    files = {"sparsescope": ROOT / "sparsescope.py"}
    for package in ("dst_core", "backend"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def imports(module: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(our modules `module` imports, third-party roots it imports)."""
    ours, others = set(), set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            (ours if target.split(".")[0] in OURS else others).add(target)
    return {target for target in ours if target in known}, {t.split(".")[0] for t in others}


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = module_files()
    known = set(files)
    edges, third_party = {}, {}
    for module, path in files.items():
        edges[module], third_party[module] = imports(module, path, known)
    return edges, third_party


def test_layers_import_only_downwards():
    edges, _ = graph()
    upward = [f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
              for module, targets in edges.items() for target in sorted(targets)
              if LAYERS[layer_of(target)] > LAYERS[layer_of(module)]]
    assert upward == []


def test_no_import_cycles():
    edges, _ = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if target == module:
                continue
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_engine_loads_no_storage_web_or_process_code():
    _, third_party = graph()
    loaded = {module: sorted(roots & set(ENGINE_FORBIDDEN))
              for module, roots in third_party.items() if layer_of(module) == "engine"}
    assert {module: roots for module, roots in loaded.items() if roots} == {}


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """Guard the guard: an upward import inside a function is found."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from dst_core.store import run_store\n    import fastapi\n")
    known = set(module_files())
    ours, others = imports("dst_core.driver", source, known)
    assert ours == {"dst_core.store.run_store"} and others == {"fastapi"}
    assert LAYERS[layer_of("dst_core.store.run_store")] > LAYERS[layer_of("dst_core.driver")]


def test_architecture_doc_lists_every_module_under_its_layer():
    """docs/architecture.md's file tables are drawn from the code: each module once, in the
    section of the layer tests above place it in."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    sections = {"engine": "### engine", "store": "### store", "writer": "### writer",
                "server": "### server"}
    starts = sorted((text.index(heading), layer) for layer, heading in sections.items())
    bounds = {layer: (start, next((s for s, _ in starts if s > start), len(text)))
              for start, layer in starts}
    misplaced = []
    for module, path in module_files().items():
        row = f"| `{path.relative_to(ROOT).as_posix()}` |"
        start, end = bounds[layer_of(module)]
        if row not in text[start:end]:
            misplaced.append(f"{row} not under {sections[layer_of(module)]}")
    listed = {line.split("`")[1] for line in text.splitlines()
              if line.startswith("| `") and line.split("`")[1].endswith(".py")}
    gone = sorted(path for path in listed if not (ROOT / path).exists())
    assert misplaced == [] and gone == []
