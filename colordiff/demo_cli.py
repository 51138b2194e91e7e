"""Argument parser of `colordiff demo` (imported by colordiff.cli; gradio is imported only when the app runs).

    colordiff demo --model M [--config YAML] [--host 127.0.0.1] [--port 7860] [--share] [key=value ...]

Settings as for `colordiff colorize`: --config files, then the flags, then key=value overrides of the keys of
DemoConfig (colordiff/demo/core.py: ColorizeConfig's keys and max_upload_mb); the page's controls start at them.
The model loads before the web server starts: a bad model or setting is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile

from colordiff.config import ConfigError, dotlist_value, is_override, load_config
from colordiff.errors import EXIT_OK, UsageError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_demo_parser(commands) -> None:
    """Add the `demo` subcommand to `commands` (argparse subparsers). Unknown positionals land in args.inputs."""
    p = commands.add_parser(
        "demo", help="web app: upload photos, colorize, edit the priors, download (needs the demo extra)",
        description="Serve a web page that colorizes uploaded photos with one model, loaded at start. Settings: "
        "--config files, then the flags, then key=value overrides of the colorize keys (colordiff/colorize.py) "
        "and max_upload_mb; the page's controls start at them. See docs/demo.md.")
    p.add_argument("inputs", nargs="*", metavar="KEY=VALUE", help="settings overrides, e.g. steps=20 seed=3")
    p.add_argument("--model", help="model folder or hub id (required; ColorDiff or SeAda)")
    p.add_argument("--config", action="append", default=[], help="YAML settings, applied in order (repeatable)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on; 0.0.0.0 lets other machines in (default: {DEFAULT_HOST!r})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default: {DEFAULT_PORT})")
    p.add_argument("--share", action="store_true",
                   help="also publish the page through a public gradio.live link (default: off)")
    p.add_argument("--local-files-only", dest="local_files_only", action="store_true", default=None,
                   help="never contact the hub for --model (default: False)")


def demo_config(args: argparse.Namespace):
    """--config files <- flags <- key=value overrides, as DemoConfig."""
    from colordiff.demo.core import DemoConfig

    bad = [a for a in args.inputs if not is_override(a)]
    if bad:
        raise ConfigError(f"unexpected arguments (expected key=value): {' '.join(bad)}")
    flags = [f"{key}={dotlist_value(getattr(args, key))}" for key in ("model", "local_files_only")
             if getattr(args, key, None) is not None]
    return load_config(DemoConfig, args.config, flags + list(args.inputs))


def run_demo_command(args: argparse.Namespace) -> int:
    """Start the web app; returns its exit status (0 when stopped with Ctrl-C)."""
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {args.port}")
    missing = [name for name in ("gradio",) if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"the demo needs {', '.join(missing)}: pip install -e '.[demo]'")
    config = demo_config(args)
    from colordiff.demo.core import Colorizer

    workdir = tempfile.mkdtemp(prefix="colordiff-demo-")
    try:
        colorizer = Colorizer(config, workdir)  # a bad model fails here, before any server starts
        from colordiff.demo.app import build_app, launch

        if args.host not in LOCAL_HOSTS:
            print(f"colordiff: warning: listening on {args.host}: anyone who can reach this machine can use the "
                  "model and see what is uploaded", file=sys.stderr)
        if args.share:
            print("colordiff: warning: --share publishes the page on a public gradio.live address", file=sys.stderr)
        print(f"colordiff: demo on http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
        try:
            launch(build_app(colorizer), colorizer, host=args.host, port=args.port, share=args.share)
        except OSError as err:  # the port is taken, the address is not this machine's
            raise UsageError(f"cannot serve on {args.host}:{args.port}: {err}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return EXIT_OK
