"""`python -m backend [--host H] [--port P] [--data-dir D]` starts the dashboard."""

import argparse
import sys

from backend.cli import add_serve_arguments, serve

parser = argparse.ArgumentParser(prog="python -m backend")
add_serve_arguments(parser)
sys.exit(serve(parser.parse_args()))
