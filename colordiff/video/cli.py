"""Argument parsers of `colordiff colorize-video` and `colordiff evaluate-video` (imported by colordiff.cli)."""

from __future__ import annotations

import argparse

VIDEO_COMMANDS = ("colorize-video", "evaluate-video")


def add_video_parsers(commands) -> None:
    """Add the two video subcommands to `commands` (argparse subparsers). Unknown positionals land in args.inputs."""
    return None  # placeholder until implemented


def run_video_command(args: argparse.Namespace) -> int:
    """Run the parsed video subcommand; returns its exit status."""
    raise NotImplementedError
