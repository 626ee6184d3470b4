"""Progress bars that a user can silence (``--quiet`` or ``PRIORLAB_QUIET=1``).

Bars are drawn only on a terminal: in a log file or CI, carriage-return updates would pile up
into thousands of lines, so there they are off.
"""

import os
import sys

from tqdm.auto import tqdm

_quiet = os.environ.get("PRIORLAB_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def progress(iterable=None, *, total=None, desc=None, leave=False, disable=None):
    """A tqdm bar on stderr, off when quiet, when stderr is no terminal, or when ``disable``."""
    off = _quiet or not sys.stderr.isatty() if disable is None else disable
    return tqdm(iterable, total=total, desc=desc, leave=leave, disable=off, dynamic_ncols=True,
                file=sys.stderr)
