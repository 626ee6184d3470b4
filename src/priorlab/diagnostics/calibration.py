"""Calibration of a classifier's confidence: expected calibration error and reliability diagrams.

Naeini, Cooper, Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian Binning",
AAAI 2015; Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017,
arXiv:1706.04599.

The confidence of a prediction is its largest class probability. Split ``(0, 1]`` into
``n_bins`` equal-width bins ``(lo, hi]`` and compare, in each bin, the mean confidence with the
accuracy::

    ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|

0 is perfectly calibrated; an overconfident network has confidence above accuracy. Returned as a
fraction (the PS-KD paper and most tables print 100 x ECE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from priorlab.errors import PriorlabError

PROBABILITY_TOLERANCE = 1e-4  # rows within this of summing to 1 (and >= 0) count as probabilities


def _as_probabilities(probs_or_logits: torch.Tensor, from_logits: bool | None) -> torch.Tensor:
    if (not isinstance(probs_or_logits, torch.Tensor) or probs_or_logits.ndim != 2
            or not probs_or_logits.is_floating_point()):
        got = (f"a {probs_or_logits.dtype} tensor of shape {tuple(probs_or_logits.shape)}"
               if isinstance(probs_or_logits, torch.Tensor) else type(probs_or_logits).__name__)
        raise PriorlabError(f"calibration needs float probabilities or logits of shape "
                            f"(N, num_classes), got {got}")
    if probs_or_logits.shape[0] == 0 or probs_or_logits.shape[1] < 2:
        raise PriorlabError(f"calibration needs at least one sample and two classes, got shape "
                            f"{tuple(probs_or_logits.shape)}")
    values = probs_or_logits.detach().double()
    if not torch.isfinite(values).all():
        raise PriorlabError("calibration got NaN or infinite values; check the model's outputs")
    looks_like_probs = bool((values >= 0).all() and ((values.sum(dim=1) - 1).abs()
                                                     <= PROBABILITY_TOLERANCE).all())
    if from_logits is None:
        from_logits = not looks_like_probs
    elif not from_logits and not looks_like_probs:
        raise PriorlabError("from_logits=False but the rows are not probability vectors (>= 0, "
                            "summing to 1); pass logits with from_logits=True or softmax first")
    return torch.softmax(values, dim=1) if from_logits else values


def _check_targets(targets: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    if (not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex()
            or targets.dtype == torch.bool or tuple(targets.shape) != (probs.shape[0],)):
        got = (f"a {targets.dtype} tensor of shape {tuple(targets.shape)}"
               if isinstance(targets, torch.Tensor) else type(targets).__name__)
        raise PriorlabError(f"targets must be integer class indices of shape ({probs.shape[0]},), "
                            f"got {got}")
    if targets.min() < 0 or targets.max() >= probs.shape[1]:
        raise PriorlabError(f"targets must lie in [0, {probs.shape[1]}), got values "
                            f"{int(targets.min())}..{int(targets.max())}")
    return targets.to(probs.device)


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise PriorlabError(f"n_bins must be an integer >= 1, got {n_bins!r} (15 is the usual "
                            "choice)")
    return n_bins


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram (bins with no sample hold NaN accuracy/confidence).

    ``edges`` has ``n_bins + 1`` entries; bin ``b`` is ``(edges[b], edges[b+1]]``.
    """

    edges: list[float]
    accuracy: list[float]
    confidence: list[float]
    count: list[int]
    ece: float

    def plot(self, ax=None, title: str | None = None):
        """Draw accuracy per bin against the diagonal; returns the matplotlib Figure."""
        if ax is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            fig = Figure(figsize=(4, 4))
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        left = self.edges[:-1]
        width = [hi - lo for lo, hi in zip(self.edges[:-1], self.edges[1:])]
        filled = [0.0 if c == 0 else a for a, c in zip(self.accuracy, self.count)]
        ax.bar(left, filled, width=width, align="edge", edgecolor="black", label="accuracy")
        gap = [0.0 if c == 0 else conf - a
               for a, conf, c in zip(self.accuracy, self.confidence, self.count)]
        ax.bar(left, gap, bottom=filled, width=width, align="edge", color="red", alpha=0.3,
               label="confidence - accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=title or f"ECE = {100 * self.ece:.2f}%")
        ax.legend(loc="upper left")
        return fig


def reliability_diagram(probs_or_logits: torch.Tensor, targets: torch.Tensor, n_bins: int = 15,
                        *, from_logits: bool | None = None) -> ReliabilityDiagram:
    """Accuracy, mean confidence and count in each of ``n_bins`` equal-width confidence bins.

    ``probs_or_logits`` is ``(N, C)``; rows that are probability vectors are taken as such and
    anything else as logits, unless ``from_logits`` says which.
    """
    probs = _as_probabilities(probs_or_logits, from_logits)
    targets = _check_targets(targets, probs)
    n_bins = _check_bins(n_bins)
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == targets).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # bin b holds edges[b] < confidence <= edges[b+1]
    bins = (torch.bucketize(confidence, edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).double()
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    occupied = count > 0
    mean_conf = torch.where(occupied, conf_sum / count.clamp(min=1), torch.nan)
    mean_acc = torch.where(occupied, correct_sum / count.clamp(min=1), torch.nan)
    ece = float(((correct_sum - conf_sum).abs()).sum() / len(targets))
    return ReliabilityDiagram(edges=edges.tolist(), accuracy=mean_acc.tolist(),
                              confidence=mean_conf.tolist(), count=count.long().tolist(), ece=ece)


def expected_calibration_error(probs_or_logits: torch.Tensor, targets: torch.Tensor,
                               n_bins: int = 15, *, from_logits: bool | None = None) -> float:
    """ECE over ``n_bins`` equal-width confidence bins, as a fraction in [0, 1].

    See :func:`reliability_diagram` for how the input is read.
    """
    return reliability_diagram(probs_or_logits, targets, n_bins, from_logits=from_logits).ece
