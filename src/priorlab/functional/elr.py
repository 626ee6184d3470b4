"""Early-Learning Regularisation (ELR) as pure functions.

Liu, Niles-Weed, Razavian, Fernandez-Granda, "Early-Learning Regularization Prevents
Memorization of Noisy Labels", NeurIPS 2020, arXiv:2007.00151.

Each training sample ``i`` keeps a target estimate ``t_i``: a running average of the model's own
(detached) predictions. Early in training these predictions are mostly right even for samples
whose label is wrong, so pulling the prediction towards ``t_i`` counters the later memorisation
of wrong labels::

    p_i  = clamp(softmax(z_i), 1e-4, 1 - 1e-4)
    t_i <- beta * t_i + (1 - beta) * p_i.detach() / sum(p_i.detach())
    loss = CE(z, y) + lam * mean_i log(1 - <t_i, p_i>)

As in the official code (shengliu66/ELR, ``ELR/model/loss.py``): the targets start at zero, the
update happens *before* the regulariser is evaluated (so ``t_i`` already holds the current,
detached prediction), only the detached copy is renormalised after clamping, and ``<t_i, p_i>``
uses the clamped (not renormalised) probabilities.

The functions here hold no state: a caller keeps the ``(num_samples, num_classes)`` buffer of
target estimates (or uses :class:`priorlab.methods.elr.ELR`, which does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.validation import check_finite, check_tensor

PROB_CLAMP = 1e-4  # official clamp on the softmax, keeps log(1 - <t, p>) finite


def _check_logits(logits: torch.Tensor) -> None:
    check_tensor(logits, "logits", who="ELR", ndim=2, dtype="float", non_empty=True,
                 hint="pass the model's raw outputs, shape (batch, num_classes), batch >= 1")
    if logits.shape[1] < 2:
        raise PriorlabError(f"ELR needs at least 2 classes, got logits of shape "
                            f"{tuple(logits.shape)}")
    check_finite(logits, "logits", who="ELR", hint="lower the learning rate or check the model's "
                                                   "inputs")


def _check_targets(target_estimates: torch.Tensor, logits: torch.Tensor) -> None:
    check_tensor(target_estimates, "target_estimates", who="ELR", shape=tuple(logits.shape),
                 dtype="float", hint="index the (num_samples, num_classes) float buffer by the "
                                     "batch's sample indices")
    t = target_estimates.detach()
    # <t, p> must stay below 1 for log(1 - <t, p>) to exist: t is a sub-probability vector
    slack = 1e-5 + t.shape[1] * torch.finfo(t.dtype).eps
    if not torch.isfinite(t).all() or (t < 0).any() or (t.sum(dim=1) > 1 + slack).any():
        raise PriorlabError("ELR target estimates must be finite, non-negative and sum to at most "
                            "1 per row; start the buffer at zeros and update it with "
                            "elr_update_targets")


def _check_beta(beta: float) -> None:
    if not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise PriorlabError(f"ELR beta (target momentum) must lie in [0, 1), got {beta!r}; "
                            "the official default is 0.7")


def _check_lam(lam: float) -> None:
    if not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise PriorlabError(f"ELR lam (regularisation strength) must be a finite number >= 0, "
                            f"got {lam!r}; the official default is 3")


def clamped_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax clamped to ``[1e-4, 1 - 1e-4]`` (not renormalised), as ELR uses it.

    Computed in at least float32: in half precision ``1 - 1e-4`` rounds to 1 and the log blows up.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.softmax(logits.to(dtype), dim=1).clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)


def elr_update_targets(target_estimates: torch.Tensor, logits: torch.Tensor,
                       beta: float = 0.7) -> torch.Tensor:
    """The batch's new target estimates ``beta * t + (1 - beta) * p / sum(p)``, ``p`` detached.

    ``target_estimates`` are the rows of the buffer for this batch (zeros at the start);
    the result is a new tensor (the input is not modified) carrying no gradient.
    """
    _check_logits(logits)
    _check_targets(target_estimates, logits)
    _check_beta(beta)
    probs = clamped_probs(logits.detach())
    probs = probs / probs.sum(dim=1, keepdim=True)
    return beta * target_estimates.detach().to(probs.dtype) + (1.0 - beta) * probs


def elr_regularizer(logits: torch.Tensor, target_estimates: torch.Tensor) -> torch.Tensor:
    """``mean_i log(1 - <t_i, p_i>)``, with ``p`` the clamped softmax of ``logits``.

    Minimising it raises the inner product between prediction and target estimate. Pass the
    *updated* estimates (from :func:`elr_update_targets`), as the official code does.
    """
    _check_logits(logits)
    _check_targets(target_estimates, logits)
    probs = clamped_probs(logits)
    inner = (target_estimates.detach().to(probs.dtype) * probs).sum(dim=1)
    return torch.log1p(-inner).mean()


def elr_loss(logits: torch.Tensor, labels: torch.Tensor, target_estimates: torch.Tensor,
             lam: float = 3.0) -> torch.Tensor:
    """Cross-entropy with the (possibly noisy) ``labels`` plus ``lam`` times the ELR regulariser."""
    _check_lam(lam)
    _check_logits(logits)
    check_tensor(labels, "labels", who="ELR", shape=(logits.shape[0],), dtype="integer",
                 hint="pass class indices as a LongTensor")
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise PriorlabError(f"ELR labels must lie in [0, {logits.shape[1]}), got values "
                            f"{int(labels.min())}..{int(labels.max())}")
    return F.cross_entropy(logits, labels.long()) + lam * elr_regularizer(logits, target_estimates)
