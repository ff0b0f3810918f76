"""`sparsescope` command line: `serve` starts the dashboard (more subcommands to come)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("SPARSESCOPE_HOST", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1; off loopback needs a token)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SPARSESCOPE_PORT", 8000)),
                        help="TCP port (default 8000)")
    parser.add_argument("--data-dir",
                        default=os.environ.get("SPARSESCOPE_DATA_DIR", "./sparsescope-data"),
                        help="run store folder (default ./sparsescope-data)")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from backend.app import create_app
    from backend.settings import Settings

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = Settings(host=args.host, port=args.port, data_dir=args.data_dir)
        app = create_app(settings)
    except ValueError as error:
        print(f"sparsescope: {error}", file=sys.stderr)
        return 2
    print(f"sparsescope dashboard: http://{settings.host}:{settings.port}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=3)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsescope", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="start the dashboard server")
    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(handler=serve)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
