"""The ``causalcell`` parser and entry point."""

from __future__ import annotations

import argparse
import sys

from causalcell.cli._commands import add_model_commands
from causalcell.cli._demo import add_demo_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``causalcell`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="causalcell", description="Causal generative models of single-cell screens."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_demo_commands(commands)
    add_model_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``causalcell`` command.

    A user's mistake (a bad path or argument, data the library refuses: ``ValueError``,
    ``KeyError``, ``FileNotFoundError``) ends the command with one line on standard error,
    ``causalcell <command>: error: <message>``, and exit code 2, as argparse does for a bad
    option; anything else is a bug and keeps its traceback.
    """
    arguments = build_parser().parse_args(argv)
    try:
        return arguments.handler(arguments)
    except (ValueError, KeyError, FileNotFoundError) as error:
        message = error.args[0] if error.args and isinstance(error.args[0], str) else error
        print(f"causalcell {arguments.command}: error: {message}", file=sys.stderr)
        return 2
