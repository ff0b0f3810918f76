"""User-registered methods across processes.

A method registered with `register_rewirer` lives in the process that registered it; the
dashboard trains each run in a fresh worker process. So the modules that registered methods
travel with the run: the server passes `SPARSESCOPE_PLUGINS` (comma-separated module names)
to each worker, which imports them before reading the config; the CLI and the server import
the same variable at start, so `SPARSESCOPE_PLUGINS=my_methods sparsescope serve` works too.
A method defined in `__main__` cannot be imported elsewhere: define it in a module.
"""

from __future__ import annotations

import importlib
import os

PLUGINS_ENV = "SPARSESCOPE_PLUGINS"


def plugin_modules() -> list[str]:
    """Importable modules that registered methods (outside dst_core), plus those already
    named in the environment, sorted."""
    from dst_core.rewire import REGISTRY

    named = {name for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()}
    registered = {type(algorithm).__module__ for algorithm in REGISTRY.values()}
    return sorted(named | {module for module in registered
                           if module != "__main__" and not module.startswith("dst_core.")})


def load_plugins(value: str | None = None) -> list[str]:
    """Import every module named in `value` (default: $SPARSESCOPE_PLUGINS); ValueError
    naming the variable when one cannot be imported."""
    value = os.environ.get(PLUGINS_ENV, "") if value is None else value
    loaded = []
    for name in (part.strip() for part in value.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ValueError(f"{PLUGINS_ENV}: cannot import {name!r}: {error}") from error
        loaded.append(name)
    return loaded


def plugin_environment() -> dict[str, str]:
    """The environment entry a child process needs to see this process's methods."""
    modules = plugin_modules()
    return {PLUGINS_ENV: ",".join(modules)} if modules else {}
