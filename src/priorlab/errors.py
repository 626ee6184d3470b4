"""The one exception type users see.

Every check on user input raises :class:`PriorlabError` with a single line that names the
problem and the fix. The CLI prints it as ``error: ...`` and exits 2, never a traceback.
"""

import difflib


class PriorlabError(ValueError):
    """Bad input, unknown name, corrupt file: a message written for the user."""


def did_you_mean(name: str, choices, kind: str) -> PriorlabError:
    """An error for an unknown ``name`` that suggests the closest of ``choices``."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = f" (known: {', '.join(choices)})" if len(choices) <= 12 else ""
    return PriorlabError(f"unknown {kind} {name!r}{hint}{listing}")
