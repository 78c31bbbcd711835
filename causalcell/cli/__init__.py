"""Command line: ``causalcell demo | simulate | fit | predict | effects | counterfactual |
evaluate`` (``causalcell <command> --help`` for each)."""

from causalcell.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
