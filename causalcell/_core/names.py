"""Name matching for error messages: "Did you mean ...?", and lists cut to a readable length.

Imports nothing else of causalcell, so every layer can word its errors the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from causalcell._core.errors import DataKeyError

__all__ = ["MAX_LISTED", "close_matches", "did_you_mean", "listing", "require_key"]

#: How many offending names an error message lists before it says "... and N more".
MAX_LISTED = 10


def listing(items: Iterable, limit: int = MAX_LISTED) -> str:
    """Repr of the first ``limit`` items, with the total when some are left out."""
    items = list(items)
    shown = repr(items[:limit])
    return shown if len(items) <= limit else f"{shown[:-1]}, ...] ({len(items)} in all)"


def close_matches(name, candidates: Iterable, n: int = 3) -> list:
    names = {str(candidate): candidate for candidate in candidates}
    return [names[match] for match in difflib.get_close_matches(str(name), names, n=n)]


def did_you_mean(name, candidates: Iterable) -> str:
    matches = close_matches(name, candidates)
    return f" Did you mean {' or '.join(repr(match) for match in matches)}?" if matches else ""


def require_key(key: str, available: Sequence, *, where: str, argument: str, also: str = ""):
    """Raise a ``KeyError`` if ``key`` is not among ``available`` (a column or layer name)."""
    if key in available:
        return
    choices = f"Available: {listing(available, 20)}" if len(available) else "It has none"
    raise DataKeyError(
        f"{where} has no {key!r}.{did_you_mean(key, available)} {choices}. "
        f"Pass {argument}= with one of them{also}."
    )
