"""The one exception type users see.

Every check on user input raises :class:`PriorlabError` with a single line that names the
problem and the fix. The CLI prints it as ``error: ...`` and exits 1 (2 for a
:class:`UsageError`: an unknown name or a bad argument), never a traceback.
"""

import difflib


class PriorlabError(ValueError):
    """Bad input, unknown name, corrupt file: a message written for the user."""


class UsageError(PriorlabError):
    """The command or call itself is wrong (unknown name, bad option), not the data."""


def did_you_mean(name: str, choices, kind: str) -> UsageError:
    """An error for an unknown ``name`` that suggests the closest of ``choices`` (case-folded)."""
    choices = sorted(choices)
    folded = {str(c).lower(): c for c in choices}
    close = [folded[c] for c in difflib.get_close_matches(str(name).lower(), list(folded), n=3, cutoff=0.5)]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = f" (known: {', '.join(choices)})" if len(choices) <= 12 else ""
    return UsageError(f"unknown {kind} {name!r}{hint}{listing}")
