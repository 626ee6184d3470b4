"""Co-teaching: two networks teach each other on the samples the other finds easy.

Han et al., "Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy Labels",
NeurIPS 2018, arXiv:1804.06872; combined with feature compression (nested dropout) in Chen et al.,
"Compressing Features for Learning with Noisy Labels", TNNLS 2022, arXiv:2206.13140.

Networks memorise clean (easy) labels before noisy ones, so early on the samples with the
smallest loss are mostly clean. Each network keeps the ``(1 - forget_rate)`` share of a batch
with its smallest cross-entropy, and its *peer* is updated on them (different networks make
different mistakes, so the exchange filters errors better than self-selection). The forget rate
rises linearly from 0 to its final value over the first ``num_gradual`` epochs.

As in Han et al.'s code (``loss.py``, ``main.py``) and the Nested-Co-teaching code
(``co_teaching_resnet/loss.py``, ``main.py``): the number kept is ``int((1 - forget_rate) * N)``,
the ranking uses the per-sample cross-entropy, and the schedule is
``linspace(0, forget_rate ** exponent, num_gradual)`` then ``forget_rate``.

Two places where the two official codes differ; we follow Nested-Co-teaching (the paper under
test), deliberately:

- Which schedule entry the first epoch uses. Han et al. (bhanML/Co-teaching ``main.py``) train
  epochs ``1 .. n_epoch - 1`` with ``rate_schedule[epoch]``, so their first trained epoch already
  forgets ``forget_rate / (num_gradual - 1)``; Nested-Co-teaching trains epoch ``t`` with
  ``rateSchedule[t - 1]``, so its first epoch forgets nothing. :func:`forget_rate_schedule` takes
  the schedule index: pass ``t`` for Han et al.'s loop, ``t - 1`` for Nested-Co-teaching's.
- The loss scale. Han et al.'s ``loss.py`` returns ``sum(mean cross-entropy) / num_remember``,
  dividing by the kept count twice. They train with Adam, which is invariant to a constant loss
  scale (up to its epsilon), so there it changes almost nothing; under SGD (Nested-Co-teaching,
  whose ``loss.py`` returns the plain mean) it would cut the step size by the kept count (~40-120
  in a batch of 64-320). :func:`coteaching_loss` returns the plain mean.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError


def _check_forget_rate(forget_rate: float) -> float:
    if isinstance(forget_rate, bool) or not isinstance(forget_rate, (int, float)) or not (
            0.0 <= forget_rate < 1.0):
        raise PriorlabError(f"forget_rate must be a number in [0, 1), got {forget_rate!r}; "
                            "Han et al. set it to the noise rate, the Nested-Co-teaching code "
                            "uses 0.2-0.3")
    return float(forget_rate)


def _check_logits_targets(logits: torch.Tensor, targets: torch.Tensor, name: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise PriorlabError(f"{name} must be float logits of shape (batch, num_classes), got {got}")
    if (not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex()
            or targets.dtype == torch.bool or tuple(targets.shape) != (logits.shape[0],)):
        got = (f"{targets.dtype} {tuple(targets.shape)}" if isinstance(targets, torch.Tensor)
               else type(targets).__name__)
        raise PriorlabError(f"targets must be integer class indices of shape "
                            f"({logits.shape[0]},), got {got}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise PriorlabError(f"targets must lie in [0, {logits.shape[1]}), got values "
                            f"{int(targets.min())}..{int(targets.max())}")
    if not torch.isfinite(logits).all():
        raise PriorlabError(f"{name} contain NaN or infinity; lower the learning rate or check "
                            "the inputs")


def num_remembered(batch_size: int, forget_rate: float) -> int:
    """How many samples of a batch are kept: ``floor((1 - forget_rate) * batch_size)``."""
    forget_rate = _check_forget_rate(forget_rate)
    # the small tolerance stops float rounding (1 - 0.9 = 0.0999...) from dropping a sample
    return math.floor((1.0 - forget_rate) * batch_size + 1e-9)


def small_loss_indices(logits: torch.Tensor, targets: torch.Tensor,
                       forget_rate: float) -> torch.Tensor:
    """Indices of the ``num_remembered`` samples with the smallest cross-entropy, smallest first.

    The ranking is computed without gradient. Raises when the batch is too small to keep any.
    """
    _check_logits_targets(logits, targets, "logits")
    keep = num_remembered(logits.shape[0], forget_rate)
    if keep < 1:
        raise PriorlabError(f"a batch of {logits.shape[0]} with forget_rate={forget_rate} keeps no "
                            "sample; use a larger batch or a smaller forget rate")
    with torch.no_grad():
        losses = F.cross_entropy(logits.detach(), targets, reduction="none")
    return torch.argsort(losses, stable=True)[:keep]


def coteaching_loss(logits1: torch.Tensor, logits2: torch.Tensor, targets: torch.Tensor,
                    forget_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss1, loss2)``: each network's cross-entropy on the samples its peer keeps.

    ``logits1`` and ``logits2`` are the two networks' outputs on the same batch. Network 1 is
    trained on the small-loss samples of network 2 and vice versa; backpropagate ``loss1`` into
    network 1 and ``loss2`` into network 2 (or their sum when one optimiser holds both).
    """
    _check_logits_targets(logits1, targets, "logits1")
    _check_logits_targets(logits2, targets, "logits2")
    if logits1.shape != logits2.shape:
        raise PriorlabError(f"the two networks' logits differ in shape ({tuple(logits1.shape)} vs "
                            f"{tuple(logits2.shape)}); feed both the same batch")
    keep1 = small_loss_indices(logits1, targets, forget_rate)
    keep2 = small_loss_indices(logits2, targets, forget_rate)
    loss1 = F.cross_entropy(logits1[keep2], targets[keep2])
    loss2 = F.cross_entropy(logits2[keep1], targets[keep1])
    return loss1, loss2


def forget_rate_schedule(epoch: int, forget_rate: float, num_gradual: int = 10,
                         exponent: float = 1.0) -> float:
    """The forget rate at ``epoch`` (0-based): linear from 0 to ``forget_rate ** exponent`` over
    the first ``num_gradual`` epochs (``numpy.linspace``, so epoch ``num_gradual - 1`` reaches
    it), then ``forget_rate``. ``num_gradual = 0`` uses ``forget_rate`` from the start.

    Han et al. use ``num_gradual = 10`` (of 200 epochs); the Nested-Co-teaching code 5 (of 30)
    when training from scratch and 0 when fine-tuning. ``epoch`` is the index into the official
    ``rate_schedule`` array: Han et al.'s first trained epoch is index 1 (``forget_rate /
    (num_gradual - 1)``), Nested-Co-teaching's is index 0 (nothing forgotten).
    """
    forget_rate = _check_forget_rate(forget_rate)
    for name, value in (("epoch", epoch), ("num_gradual", num_gradual)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PriorlabError(f"{name} must be an integer >= 0, got {value!r}")
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not (
            math.isfinite(exponent) and exponent > 0):
        raise PriorlabError(f"exponent must be a finite number > 0, got {exponent!r}")
    if epoch >= num_gradual:
        return forget_rate
    if num_gradual == 1:
        return 0.0
    return forget_rate ** exponent * epoch / (num_gradual - 1)
