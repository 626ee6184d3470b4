"""Progressive self-knowledge distillation (PS-KD) as pure functions.

Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive Refinement of Targets",
ICCV 2021, arXiv:2006.12000.

The model is its own teacher: at epoch ``t`` (of ``T``) a sample's target mixes its one-hot label
with the model's prediction for it from the previous epoch, and the loss is the cross-entropy
with that soft target::

    alpha_t = alpha_T * t / T
    target  = (1 - alpha_t) * onehot(y) + alpha_t * p_{t-1}(x)
    loss    = mean_i  -sum_c target_ic * log softmax(z_i)_c

As in the official code (lgcnsai/PS-KD-Pytorch, ``main.py`` and ``loss/pskd_loss.py``):
``alpha_T = 0.8``; with 0-based epochs ``alpha_t = alpha_T * (epoch + 1) / T``; the stored
predictions are the softmax of the training forward pass (no gradient); in the first epoch the
"previous prediction" is the one-hot label itself, so the target is the plain label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.validation import check_finite, check_tensor


def check_alpha(alpha: float, name: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise PriorlabError(f"PS-KD {name} must be a number in [0, 1], got {alpha!r}; the "
                            "official alpha_T is 0.8")
    return float(alpha)


def pskd_alpha(epoch: int, total_epochs: int, alpha_T: float = 0.8) -> float:
    """``alpha_T * (epoch + 1) / total_epochs`` for a 0-based ``epoch``, held at ``alpha_T`` after
    the last scheduled epoch."""
    check_alpha(alpha_T, "alpha_T")
    for name, value, low in (("epoch", epoch, 0), ("total_epochs", total_epochs, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise PriorlabError(f"PS-KD {name} must be an integer >= {low}, got {value!r}")
    return alpha_T * min(epoch + 1, total_epochs) / total_epochs


def _check_logits(logits: torch.Tensor) -> None:
    check_tensor(logits, "logits", who="PS-KD", ndim=2, dtype="float", non_empty=True,
                 hint="pass the model's raw outputs, shape (batch, num_classes), batch >= 1")
    check_finite(logits, "logits", who="PS-KD", hint="lower the learning rate or check the inputs")


def _check_labels(labels: torch.Tensor, num_classes: int, batch: int) -> None:
    if (not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex()
            or labels.dtype == torch.bool or tuple(labels.shape) != (batch,)):
        got = (f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
               else type(labels).__name__)
        raise PriorlabError(f"PS-KD labels must be integer class indices of shape ({batch},), "
                            f"got {got}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise PriorlabError(f"PS-KD labels must lie in [0, {num_classes}), got values "
                            f"{int(labels.min())}..{int(labels.max())}")


def _check_distribution(probs: torch.Tensor, shape: tuple, name: str) -> None:
    if not isinstance(probs, torch.Tensor) or tuple(probs.shape) != tuple(shape):
        got = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise PriorlabError(f"PS-KD {name} must have shape {tuple(shape)}, got {got}; index the "
                            "(num_samples, num_classes) buffer by the batch's sample indices")
    p = probs.detach()
    if (not p.is_floating_point() or not torch.isfinite(p).all() or (p < 0).any()
            or ((p.sum(dim=1) - 1).abs() > 1e-3).any()):
        raise PriorlabError(f"PS-KD {name} must be probability vectors (finite, >= 0, rows "
                            "summing to 1): store softmax(outputs).detach()")


def pskd_targets(labels: torch.Tensor, past_predictions: torch.Tensor,
                 alpha: float) -> torch.Tensor:
    """``(1 - alpha) * onehot(labels) + alpha * past_predictions`` (no gradient)."""
    check_alpha(alpha)
    if not isinstance(past_predictions, torch.Tensor) or past_predictions.ndim != 2:
        got = (tuple(past_predictions.shape) if isinstance(past_predictions, torch.Tensor)
               else type(past_predictions).__name__)
        raise PriorlabError(f"PS-KD past_predictions must have shape (batch, num_classes), got "
                            f"{got}")
    _check_labels(labels, past_predictions.shape[1], past_predictions.shape[0])
    _check_distribution(past_predictions, past_predictions.shape, "past_predictions")
    past = past_predictions.detach()
    onehot = F.one_hot(labels.long(), past.shape[1]).to(past.dtype)
    return (1.0 - alpha) * onehot + alpha * past


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """``mean_i -sum_c t_ic log softmax(z_i)_c``: cross-entropy with a target distribution."""
    _check_logits(logits)
    _check_distribution(soft_targets, logits.shape, "soft targets")
    log_probs = F.log_softmax(logits, dim=1)
    return -(soft_targets.detach().to(log_probs.dtype) * log_probs).sum(dim=1).mean()


def pskd_loss(logits: torch.Tensor, labels: torch.Tensor, past_predictions: torch.Tensor,
              alpha: float) -> torch.Tensor:
    """Cross-entropy with the PS-KD target ``(1 - alpha) onehot(y) + alpha p_prev``.

    ``past_predictions`` are the batch's rows of the buffer of last-epoch softmax outputs (the
    one-hot labels where a sample has not been predicted yet); ``alpha`` from :func:`pskd_alpha`.
    """
    _check_logits(logits)
    if not isinstance(past_predictions, torch.Tensor) or past_predictions.shape != logits.shape:
        got = (tuple(past_predictions.shape) if isinstance(past_predictions, torch.Tensor)
               else type(past_predictions).__name__)
        raise PriorlabError(f"PS-KD past_predictions must have the logits' shape "
                            f"{tuple(logits.shape)}, got {got}")
    return soft_cross_entropy(logits, pskd_targets(labels, past_predictions, alpha))

