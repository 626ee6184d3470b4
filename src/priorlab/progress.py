"""Progress bars that a user can silence (``--quiet`` or ``PRIORLAB_QUIET=1``)."""

import os

from tqdm.auto import tqdm

_quiet = os.environ.get("PRIORLAB_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def progress(iterable=None, *, total=None, desc=None, leave=False, disable=None):
    """A tqdm bar on stderr, off when quiet (or when ``disable`` is true)."""
    return tqdm(iterable, total=total, desc=desc, leave=leave,
                disable=_quiet if disable is None else disable, dynamic_ncols=True)
