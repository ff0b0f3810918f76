"""`sparsescope` command line: serve the dashboard, train headless, manage recorded runs.

    sparsescope serve [--host H] [--port P] [--data-dir D]
    sparsescope train [--method rigl --density 0.05 ...] [--data-dir D | --url URL --token T]
    sparsescope runs list|show ID|export ID [-o FILE]|import FILE|delete ID  [--data-dir D]
    sparsescope export ID [--compact] [--out model.pt] [--batch-size N]  [--data-dir D]

`train` takes every field of the REST run config as a flag; the flags are generated from
RunConfig's fields, so a field added there is a flag here with no change to this file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
import types
import typing
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from dst_core.store import ACTIVE_STATUSES, DEFAULT_DATA_DIR


def environment_settings():
    """Settings from the environment (SPARSESCOPE_*), the one place the CLI reads it. A value
    that does not parse exits 2 with one line naming its variable: never the defaults in its
    place (a bad SPARSESCOPE_PORT would serve on 8000, a bad anything the default folder)."""
    from backend.settings import SettingsError, parsed_settings

    try:
        return parsed_settings()
    except SettingsError as error:
        print(f"sparsescope: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = environment_settings()
    parser.add_argument("--host", default=defaults.host,
                        help="address to bind (default 127.0.0.1; off loopback needs a token)")
    parser.add_argument("--port", type=int, default=defaults.port,
                        help="TCP port (default 8000)")
    parser.add_argument("--data-dir", default=str(defaults.data_dir),
                        help=f"run store folder (default {DEFAULT_DATA_DIR})")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from backend.app import create_app
    from backend.http_limits import bounded_http_protocol
    from backend.settings import parsed_settings

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = parsed_settings({"host": args.host, "port": args.port,
                                    "data_dir": args.data_dir},
                                   flags={"host": "--host", "port": "--port",
                                          "data_dir": "--data-dir"})
        app = create_app(settings)
        # Held from here on (the app's lifespan keeps it): a second server exits at once.
        app.state.folder_lock.acquire(settings.host, settings.port)
    except ValueError as error:
        print(f"sparsescope: {error}", file=sys.stderr)
        return 2
    print(f"sparsescope dashboard: http://{settings.host}:{settings.port}", flush=True)
    # No permessage-deflate: it compresses every message once per viewer (most of the server's
    # CPU with 50 viewers, bench/viewers.py), and frames are packed bits or announcements.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=3, access_log=False,  # AccessLog logs requests
                http=bounded_http_protocol(settings.max_header_bytes),
                ws_per_message_deflate=False)
    return 0


# ---- train ---------------------------------------------------------------------------------------
def _flag_spec(annotation) -> dict:
    """argparse keywords for one RunConfig field type (Literal, optional, list, scalar)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # e.g. list[Annotated[int, Field(ge=1)]]: parse the int
        return _flag_spec(args[0])
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        return _flag_spec(inner[0]) if len(inner) == 1 else {"type": str}
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin is list:
        return {**_flag_spec(args[0] if args else str), "nargs": "+"}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": annotation}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from dst_core.store.config import RunConfig

    config = parser.add_argument_group("run config (every field of the REST run config)")
    properties = RunConfig.model_json_schema()["properties"]
    for name, field in RunConfig.model_fields.items():
        spec = _flag_spec(field.annotation)
        if "enum" in properties[name]:  # e.g. method: every registered one
            spec["choices"] = properties[name]["enum"]
        description = field.description or name
        # A field left out (None) takes a default its description names (the task's epochs,
        # the method's schedule); only a plain value is worth repeating here.
        shown = "" if field.default is None and "default" in description \
            else f" (default: {'the method’s' if field.default is None else field.default})"
        config.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS,
                            help=description + shown, **spec)
    where = parser.add_argument_group("where the run is recorded")
    defaults = environment_settings()
    # None, not the folder: given together with --url it is refused (train_command), and
    # only a flag the user typed can be told apart from a default.
    where.add_argument("--data-dir", default=None,
                       help=f"run store folder (default $SPARSESCOPE_DATA_DIR, else "
                            f"{DEFAULT_DATA_DIR}; not with --url)")
    where.add_argument("--url", default=None,
                       help="record into a running server instead (e.g. http://host:8000), "
                            "which stores the run in its own data folder")
    where.add_argument("--token", default=defaults.token,
                       help="the server's bearer token (with --url)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


class ProgressSink:
    """Passes events to the recorder and draws a progress bar from them on stderr."""

    def __init__(self, recorder, quiet: bool, stream=sys.stderr):
        self.recorder = recorder
        self.quiet = quiet
        self.stream = stream
        self.total_steps = 0
        self.loss: float | None = None
        self.accuracy: float | None = None
        self._drawn = 0.0

    def emit(self, type: str, step: int, payload: dict) -> None:
        self.recorder.emit(type, step, payload)
        if type == "meta":
            self.total_steps = int(payload.get("total_steps") or 0)
        elif type == "metrics":
            self.loss = payload.get("loss", self.loss)
        elif type == "eval":
            self.accuracy = payload.get("test_accuracy", self.accuracy)
        if not self.quiet and (time.monotonic() - self._drawn > 0.2 or type == "eval"):
            self.draw(step)

    def draw(self, step: int, end: str = "") -> None:
        total = max(1, self.total_steps)
        done = min(1.0, step / total)
        bar = "#" * int(done * 30)
        loss = f" loss {self.loss:.4f}" if isinstance(self.loss, float) else ""
        accuracy = f" test acc {self.accuracy:.3f}" if isinstance(self.accuracy, float) else ""
        self.stream.write(f"\r[{bar:<30}] {step}/{total}{loss}{accuracy}{end}")
        self.stream.flush()
        self._drawn = time.monotonic()

    def flush(self) -> None:
        self.recorder.flush()

    def save_model(self, model, driver) -> None:
        self.recorder.save_model(model, driver)


def train_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from dst_core.recording import Recorder, RemoteRecorderError
    from dst_core.recording.training import train
    from dst_core.store.config import RunConfig

    if args.url and args.data_dir is not None:
        print("sparsescope train: --url and --data-dir: give one of them (a run recorded into a "
              "server is stored in that server's data folder)", file=sys.stderr)
        return 2
    data_dir = args.data_dir or str(environment_settings().data_dir)
    fields = {name: value for name, value in vars(args).items() if name in RunConfig.model_fields}
    try:
        config = RunConfig.model_validate(fields)
    except ValidationError as error:
        for item in error.errors():
            field, *index = item["loc"] or ("config",)
            where = f" (value {int(index[0]) + 1})" if index and isinstance(index[0], int) else ""
            print(f"sparsescope train: --{str(field).replace('_', '-')}{where}: {item['msg']}",
                  file=sys.stderr)
        return 2
    # The recorder's warnings (a server not answering yet) as one line each, not a source line.
    warnings.showwarning = lambda message, *_args, **_kwargs: print(
        f"sparsescope train: warning: {message}", file=sys.stderr, flush=True)
    try:
        options = {"url": args.url, "token": args.token} if args.url else {}
        recorder = Recorder(data_dir, name=config.display_name(), config=config.model_dump(),
                            writer="cli", keyframe_every=config.keyframe_every, **options)
    except (RemoteRecorderError, ValueError, OSError, sqlite3.Error) as error:
        print(f"sparsescope train: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while a remote server is being waited for: no run yet
        print("sparsescope train: interrupted before the run was created", file=sys.stderr)
        return 130
    # Only now: Ctrl-C before this point must interrupt the wait above, not be swallowed.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT,
                                                                            signal.SIGTERM)}
    print(f"run {recorder.run_id}: {config.display_name()}", file=sys.stderr, flush=True)
    sink = ProgressSink(recorder, args.quiet)
    recorder.start()
    try:
        outcome = train(config, sink, should_stop=stop.is_set)
        error = None
    except Exception as failure:
        outcome, error = "failed", f"{type(failure).__name__}: {failure}"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        recorder.finish(outcome, error=error)
    except RemoteRecorderError as failure:
        print(f"\nsparsescope train: {failure}", file=sys.stderr)
        return 1
    if not args.quiet:
        sink.draw(sink.recorder.last_step, end="\n")
    print(f"run {recorder.run_id} {outcome}" + (f": {error}" if error else ""), file=sys.stderr)
    print(recorder.run_id)
    return {"completed": 0, "stopped": 130}.get(outcome, 1)


# ---- runs ----------------------------------------------------------------------------------------
def _store(args: argparse.Namespace):

    if not Path(args.data_dir, "runs.sqlite3").exists():
        raise SystemExit(f"sparsescope runs: no run store in {args.data_dir} (use --data-dir)")
    return _open_store(args.data_dir)


def _open_store(data_dir: str):
    """The data folder's store, or a one-line exit when it is not a folder or not a store."""
    from dst_core.store import RunStore

    try:
        return RunStore(data_dir, max_frame_elements=environment_settings().max_parameters)
    except (OSError, sqlite3.Error, ValueError) as error:
        raise SystemExit(f"sparsescope: cannot open the run store in {data_dir}: {error}") from None


def _run_or_exit(store, run_id: str) -> dict:
    run = store.get_run(run_id)
    if run is None:
        raise SystemExit(f"sparsescope runs: no run {run_id!r} in {store.data_dir}")
    return run


def run_warnings(run: dict) -> list[str]:
    """Why the run's settings may show nothing, as `POST /api/runs` answers for its config;
    [] for a script's or remote job's own config dict, which is not a run config."""
    from dst_core.store.config import RunConfig
    from dst_core.store.plan import plan_run

    if run.get("unreadable") or run["info"].get("writer") in ("script", "remote"):
        return []
    try:
        return plan_run(RunConfig.model_validate(run["config"])).warnings
    except (ValueError, KeyError):  # a config this build cannot plan (a method not loaded)
        return []


def runs_command(args: argparse.Namespace) -> int:
    from dst_core.store import BadExportError, export_run, import_run
    from dst_core.store.transfer import export_filename

    if args.action == "import":
        store = _open_store(args.data_dir)
        try:
            run = import_run(store, Path(args.file))
        except OSError as error:
            raise SystemExit(f"sparsescope runs import: {error}") from None
        except BadExportError as error:
            raise SystemExit(f"sparsescope runs import: {args.file}: {error}") from None
        print(run["id"])
        return 0
    store = _store(args)
    if args.action == "list":
        print_runs(listed_runs(store))
        return 0
    run = _run_or_exit(store, args.run_id)
    if args.action == "show":
        print(json.dumps({**run, "warnings": run_warnings(run)}, indent=2))
    elif args.action == "export":
        target = Path(args.output or export_filename(run["name"]))
        try:
            export_run(store, run["id"], target)
        except (OSError, sqlite3.Error) as error:  # an unwritable or missing folder
            raise SystemExit(f"sparsescope runs export: cannot write {target}: {error}") from None
        print(target)
    elif args.action == "delete":
        if run["status"] in ACTIVE_STATUSES and not args.force:
            from backend.manager import being_written_message, live_writer, writer_name

            if live_writer(run, environment_settings().stale_after_s):
                raise SystemExit(f"sparsescope runs delete: {being_written_message(run, '--force')}")
            raise SystemExit(f"sparsescope runs delete: run {run['id']} is {run['status']} "
                             f"(written by {writer_name(run)}); stop it first or pass --force "
                             "(its writer then stops at its next write)")
        store.delete_run(run["id"])
        print(f"deleted {run['id']}")
    return 0


# ---- export a trained model -------------------------------------------------------------------
def export_command(args: argparse.Namespace) -> int:
    """The run's trained model (`--compact`: as `dst_core.compact` makes it) to a `.pt` file."""
    import io

    import torch

    from dst_core.store import MODEL_ARTIFACT
    from dst_core.store.transfer import load_model

    if args.batch_size < 1:
        raise SystemExit(f"sparsescope export: --batch-size: must be >= 1, got {args.batch_size}")
    store = _store(args)
    run = _run_or_exit(store, args.run_id)
    data = store.get_artifact(run["id"], MODEL_ARTIFACT)
    if data is None:
        raise SystemExit(f"sparsescope export: run {run['id']} stored no model (a run stores it "
                         "when training ends; a script stores it with rec.save_model(model, "
                         "driver))")
    target = Path(args.out or f"{run['id']}{'-compact' if args.compact else ''}.pt")
    if not args.compact:
        payload = data
    else:
        from dst_core import compact, compact_layers

        try:
            model = load_model(data)
        except (ValueError, KeyError, TypeError) as error:
            raise SystemExit(
                f"sparsescope export: run {run['id']}: the model cannot be rebuilt here ({error}): "
                "its architecture is a script's own; in Python: model = load_model(file, "
                "model=YourModel()); dst_core.compact(model)") from None
        except RuntimeError as error:  # state dict and rebuilt architecture disagree
            raise SystemExit(f"sparsescope export: run {run['id']}: {error}") from None
        shape = torch.load(io.BytesIO(data), map_location="cpu",
                           weights_only=True)["architecture"]["input_shape"]
        example = torch.zeros(1, *shape)  # times each layer on its real input size
        compacted = compact(model, batch_size=args.batch_size, example_input=example)
        for layer in compact_layers(compacted):
            print(f"{layer['layer']}: {layer['format']}, density {layer['density']:.3f}, "
                  f"{layer['speedup']:.2f}x at batch {args.batch_size}", file=sys.stderr)
        buffer = io.BytesIO()
        torch.save(compacted, buffer)
        payload = buffer.getvalue()
    try:
        target.write_bytes(payload)
    except OSError as error:
        raise SystemExit(f"sparsescope export: cannot write {target}: {error}") from None
    print(target)
    return 0


LIST_COLUMNS = (  # (title, width, right-aligned)
    ("id", 16, False), ("status", 9, False), ("method", 11, False), ("task", 9, False),
    ("density", 7, True), ("steps", 7, True), ("best acc", 8, True), ("created (UTC)", 19, False),
    ("name", 0, False),
)


def run_columns(run: dict) -> list[str]:
    """One row of `runs list`: what a run used (its stored settings, else its config)."""
    used = run.get("settings") or run.get("config") or {}
    density = used.get("density")
    best = run["summary"].get("best_test_accuracy")
    return [run["id"], run["status"], str(used.get("method") or "–"),
            str(used.get("task") or "–"),
            f"{density:g}" if isinstance(density, (int, float)) else "–",
            str(run["summary"].get("steps", 0)),
            f"{best:.2%}" if isinstance(best, (int, float)) else "–",
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run["created_at"])), run["name"]]


def listed_runs(store) -> Iterator[dict]:
    """Every run newest first, a page at a time, as the runs list shows it (a bounded row,
    whatever the run stored)."""
    after = None
    while True:
        page = store.list_page(500, after)
        yield from page.runs
        if page.next_after is None:
            return
        after = page.next_after


def print_runs(runs: Iterable[dict]) -> None:
    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) if right else cell.ljust(width)
                         for cell, (_, width, right) in zip(cells, LIST_COLUMNS, strict=True))

    print(line([title for title, _, _ in LIST_COLUMNS]).rstrip())
    for run in runs:
        print(line(run_columns(run)).rstrip())


class OneLineErrors(argparse.ArgumentParser):
    """A bad flag is one line naming it (the usage block of `train` is 20 lines long)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    from dst_core.plugins import load_plugins

    try:
        load_plugins()  # user methods named in $SPARSESCOPE_PLUGINS become --method choices
    except ValueError as error:
        print(f"sparsescope: {error}", file=sys.stderr)
        return 2
    parser = OneLineErrors(prog="sparsescope", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="start the dashboard server")
    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(handler=serve)

    train_parser = commands.add_parser("train", help="train one run headless and record it")
    add_train_arguments(train_parser)
    train_parser.set_defaults(handler=train_command)

    runs_parser = commands.add_parser("runs", help="list, show, export, import, delete runs")
    actions = runs_parser.add_subparsers(dest="action", required=True)
    data_dir_default = str(environment_settings().data_dir)
    for action, help_text in (("list", "every run, newest first"), ("show", "one run as JSON"),
                              ("export", "write one run to a .sparsescope file"),
                              ("import", "add the run in a .sparsescope file"),
                              ("delete", "delete a run and its data")):
        sub = actions.add_parser(action, help=help_text)
        sub.add_argument("--data-dir", default=data_dir_default, help="run store folder")
        if action in ("show", "export", "delete"):
            sub.add_argument("run_id", help="the run's 16-hex-digit id")
        if action == "export":
            sub.add_argument("-o", "--output", help="file to write (default <name>.sparsescope)")
        if action == "import":
            sub.add_argument("file", help="a .sparsescope file from `runs export`")
        if action == "delete":
            sub.add_argument("--force", action="store_true", help="delete even an active run")
        sub.set_defaults(handler=runs_command)
    export_parser = commands.add_parser(
        "export", help="write a run's trained model to a .pt file (--compact: sparse, faster)")
    export_parser.add_argument("run_id", help="the run's 16-hex-digit id")
    export_parser.add_argument("--compact", action="store_true",
                               help="each layer in its fastest measured format (dst_core.compact); "
                                    "load with torch.load(path, weights_only=False)")
    export_parser.add_argument("--out", "-o", help="file to write (default <id>[-compact].pt)")
    export_parser.add_argument("--batch-size", type=int, default=1,
                               help="the batch the formats are timed at (default 1)")
    export_parser.add_argument("--data-dir", default=data_dir_default, help="run store folder")
    export_parser.set_defaults(handler=export_command)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except BrokenPipeError:
        # The reader left (`sparsescope runs show ID | head`): not an error of ours. Output
        # still buffered goes to /dev/null, so the interpreter's last flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command the pipe closed on


if __name__ == "__main__":
    sys.exit(main())
