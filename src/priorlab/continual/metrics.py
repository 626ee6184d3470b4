"""Continual-learning metrics on the accuracy matrix, and its plot.

``R[i, j]`` is the accuracy on task ``j`` after training tasks ``0..i`` (T x T). Entries above
the diagonal (tasks not trained yet) may be NaN; only forward transfer reads them.

- average accuracy (Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
  NeurIPS 2017, arXiv:1706.08840, eq. 2): ``ACC = 1/T sum_j R[T-1, j]``;
- backward transfer (ibid.): ``BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])``;
- forward transfer (ibid.): ``FWT = 1/(T-1) sum_{j>=1} (R[j-1, j] - b_j)`` with ``b_j`` the
  accuracy on task ``j`` of the model before any training;
- forgetting (Chaudhry et al., "Riemannian Walk for Incremental Learning", ECCV 2018,
  arXiv:1801.10112, eq. 5-6): ``f_j = max_{l<T-1} R[l, j] - R[T-1, j]``, averaged over
  ``j < T-1``. The max runs over ``l >= j`` (rows in which task ``j`` was trained), since an
  accuracy before learning a task is no knowledge to forget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from priorlab.errors import PriorlabError


def _matrix(R, who: str) -> np.ndarray:
    try:
        m = np.asarray(R, dtype=float)
    except (TypeError, ValueError) as e:
        raise PriorlabError(f"{who}: the accuracy matrix must be a square array of numbers") from e
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise PriorlabError(f"{who}: the accuracy matrix must be square (T x T, T >= 1), got "
                            f"shape {m.shape}")
    lower = m[np.tril_indices(len(m))]
    if not np.all(np.isfinite(lower)):
        raise PriorlabError(f"{who}: R[i, j] for j <= i (tasks already trained) must be finite; "
                            "only entries above the diagonal may be NaN")
    finite = m[np.isfinite(m)]
    if np.any(finite < 0) or np.any(finite > 1):
        raise PriorlabError(f"{who}: accuracies must lie in [0, 1], got values in "
                            f"[{finite.min():g}, {finite.max():g}]")
    return m


def _needs_two_tasks(m: np.ndarray, who: str) -> None:
    if len(m) < 2:
        raise PriorlabError(f"{who}: needs at least two tasks (a 1 x 1 matrix has no earlier task)")


def average_accuracy(R) -> float:
    """Mean accuracy over all tasks after the last one: ``mean_j R[T-1, j]``."""
    m = _matrix(R, "average_accuracy")
    return float(m[-1].mean())


def forgetting_per_task(R) -> np.ndarray:
    """``f_j = max_{j <= l < T-1} R[l, j] - R[T-1, j]`` for each ``j < T-1`` (Chaudhry et al.)."""
    m = _matrix(R, "forgetting")
    _needs_two_tasks(m, "forgetting")
    last = len(m) - 1
    return np.array([m[j:last, j].max() - m[last, j] for j in range(last)])


def forgetting(R) -> float:
    """Average forgetting over the tasks before the last (Chaudhry et al. 2018)."""
    return float(forgetting_per_task(R).mean())


def backward_transfer(R) -> float:
    """``1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])`` (GEM); negative means forgetting."""
    m = _matrix(R, "backward_transfer")
    _needs_two_tasks(m, "backward_transfer")
    last = len(m) - 1
    return float(np.mean([m[last, j] - m[j, j] for j in range(last)]))


def forward_transfer(R, initial_accuracy: Sequence[float]) -> float:
    """``1/(T-1) sum_{j>=1} (R[j-1, j] - b_j)`` (GEM), ``b`` = ``initial_accuracy``, the
    accuracy on each task of the untrained (randomly initialised) model."""
    m = _matrix(R, "forward_transfer")
    _needs_two_tasks(m, "forward_transfer")
    b = np.asarray(initial_accuracy, dtype=float)
    if b.shape != (len(m),) or not np.all(np.isfinite(b)):
        raise PriorlabError(f"forward_transfer: initial_accuracy needs one finite accuracy per "
                            f"task ({len(m)}), got shape {b.shape}")
    above = np.array([m[j - 1, j] for j in range(1, len(m))])
    if not np.all(np.isfinite(above)):
        raise PriorlabError("forward_transfer reads R[j-1, j] (accuracy on the next task before "
                            "training it); fill the entries above the diagonal (accuracy_row "
                            "evaluates every task)")
    return float(np.mean(above - b[1:]))


def plot_accuracy_matrix(R, *, ax=None, title: str = "", path=None):
    """Heat map of ``R`` (rows: after training task i; columns: task j) with each entry
    written in; returns the figure, saved to ``path`` when given."""
    import matplotlib
    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = _matrix(R, "plot_accuracy_matrix")
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(m), 0.8 + 0.6 * len(m)))
    else:
        fig = ax.figure
    image = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(len(m)):
        for j in range(len(m)):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if m[i, j] > 0.6 else "white")
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_xticks(range(len(m)))
    ax.set_yticks(range(len(m)))
    ax.set_title(title or f"accuracy matrix (ACC {m[-1].mean():.3f})")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return fig
