"""Argument parser of `colordiff demo` (imported by colordiff.cli; gradio is imported only when the app runs)."""

from __future__ import annotations

import argparse


def add_demo_parser(commands) -> None:
    """Add the `demo` subcommand to `commands` (argparse subparsers). Unknown positionals land in args.inputs."""
    return None  # placeholder until implemented


def run_demo_command(args: argparse.Namespace) -> int:
    """Start the web app; returns its exit status."""
    raise NotImplementedError
