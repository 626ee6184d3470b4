"""Where a result came from: the commit, the library versions, the BLAS and the CPU.

Reruns of the same code can drift in the last bits across CPUs and BLAS builds, so every result
records both; the report lists them and the rerun test (tests/test_rerun.py) uses them to decide
between an exact and a 1e-9-relative comparison.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path


# Generated evidence: rewriting it while a rerun is under way does not make the code dirty.
GENERATED = ("results", "REPORT.md", "report.html", "site", "src/priorlab/evidence.json")


def git_commit() -> str:
    """HEAD, with ``+dirty`` when tracked files other than the generated evidence differ."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=here)
        exclude = [f":(top,exclude){path}" for path in GENERATED]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                *exclude], capture_output=True, text=True, timeout=5, cwd=here).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def blas() -> str:
    """numpy's BLAS (library, version, kernel) as threadpoolctl sees it, and torch's."""
    import numpy  # noqa: F401  (loads the BLAS so that threadpoolctl can see it)
    import torch
    from threadpoolctl import threadpool_info

    found = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')})"
             for i in threadpool_info() if i.get("user_api") == "blas"]
    torch_blas = "mkl" if torch.backends.mkl.is_available() else "openblas/other"
    return f"numpy: {', '.join(sorted(set(found))) or 'unknown'}; torch: {torch_blas}"


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, str]:
    import numpy
    import scipy
    import torch

    import priorlab
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "scipy": scipy.__version__, "cvxpy": _version("cvxpy"),
            "priorlab": priorlab.__version__, "blas": blas(), "cpu": cpu_model()}
