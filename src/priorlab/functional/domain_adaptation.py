"""Unsupervised domain adaptation for text encoders: masked-LM continued pre-training (CPT) and
the domain-adversarial (DANN) baseline.

CPT — Uppaal, Li & Hu, "How Useful is Continued Pre-Training for Generative Unsupervised Domain
Adaptation?", RepL4NLP @ ACL 2024 (arXiv 2401.17514): before fine-tuning on the labelled source,
the pretrained model continues its masked-language-model objective on the *unlabelled target*
text. The masking is BERT's (Devlin et al., NAACL 2019, arXiv 1810.04805, Sec. 3.1): choose 15% of
the tokens, replace 80% of the chosen ones by ``[MASK]``, 10% by a random token, keep 10%; the loss
is the cross-entropy on the chosen positions only -> :func:`mask_tokens`, :func:`masked_lm_loss`.

DANN — Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016 (arXiv
1505.07818), the domain-invariance method the paper compares against: a domain classifier reads the
features through a gradient reversal layer (identity forward, ``-lambda`` times the gradient
backward, Eq. 14), so minimising its loss trains the classifier and pushes the encoder to make the
domains indistinguishable; ``lambda`` ramps as ``2 / (1 + exp(-gamma p)) - 1`` with training
progress ``p`` in [0, 1] and ``gamma = 10`` (Sec. 5.2.2) -> :class:`GradientReversal`,
:func:`dann_lambda`, :func:`dann_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_same_dtype, check_tensor

IGNORE_INDEX = -100  # label of the positions the masked-LM loss skips (PyTorch's and transformers')


def mask_tokens(input_ids: torch.Tensor, *, mask_token_id: int, vocab_size: int,
                special_mask: torch.Tensor | None = None, probability: float = 0.15,
                mask_share: float = 0.8, random_share: float = 0.1,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: returns ``(masked_ids, labels)``.

    Each token not flagged in ``special_mask`` (padding, ``[CLS]``, ``[SEP]``: True = never chosen)
    is chosen with ``probability``; of the chosen, ``mask_share`` become ``mask_token_id``,
    ``random_share`` a uniformly drawn token id, the rest stay. ``labels`` hold the original id at
    chosen positions and ``IGNORE_INDEX`` (-100) elsewhere. ``input_ids`` is not modified.
    """
    who = "mask_tokens"
    check_tensor(input_ids, "input_ids", who=who, min_ndim=1, dtype="integer", non_empty=True)
    vocab_size = check_number(vocab_size, "vocab_size", who=who, low=1, integer=True)
    mask_token_id = check_number(mask_token_id, "mask_token_id", who=who, low=0, high=vocab_size - 1,
                                 integer=True)
    probability = check_number(probability, "probability", who=who, low=0, high=1, low_open=True)
    mask_share = check_number(mask_share, "mask_share", who=who, low=0, high=1)
    random_share = check_number(random_share, "random_share", who=who, low=0, high=1)
    if mask_share + random_share > 1 + 1e-9:
        raise PriorlabError(f"{who}: mask_share + random_share must be <= 1 (the rest is kept), "
                            f"got {mask_share} + {random_share}")
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size:
        raise PriorlabError(f"{who}: input_ids must lie in [0, vocab_size={vocab_size}), got "
                            f"[{int(input_ids.min())}, {int(input_ids.max())}]")
    if special_mask is None:
        special_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    check_tensor(special_mask, "special_mask", who=who, shape=tuple(input_ids.shape), dtype="bool")

    def uniform() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=input_ids.device)

    chosen = (uniform() < probability) & ~special_mask
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    draw = uniform()  # one draw splits the chosen tokens into mask / random / keep
    to_mask = chosen & (draw < mask_share)
    to_random = chosen & (draw >= mask_share) & (draw < mask_share + random_share)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not ``IGNORE_INDEX``.

    ``logits``: ``(..., vocab)``; ``labels``: ``logits.shape[:-1]``. Zero (with a gradient) when
    nothing was chosen, so a batch of short texts cannot produce NaN.
    """
    who = "masked_lm_loss"
    check_tensor(logits, "logits", who=who, min_ndim=2, dtype="float", non_empty=True)
    check_tensor(labels, "labels", who=who, shape=tuple(logits.shape[:-1]), dtype="integer")
    chosen = labels != IGNORE_INDEX
    if not bool(chosen.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[chosen], labels[chosen])


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; the backward pass multiplies the gradient by ``-scale`` (DANN Eq. 14)."""
    check_tensor(x, "x", who="reverse_gradient", dtype="float")
    scale = check_number(scale, "scale", who="reverse_gradient", low=0)
    return _ReverseGradient.apply(x, scale)


class GradientReversal(nn.Module):
    """The gradient reversal layer as a module; set ``.scale`` (lambda) as training progresses."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = check_number(scale, "scale", who="GradientReversal", low=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """DANN's adaptation-factor ramp ``2 / (1 + exp(-gamma p)) - 1``: 0 at p = 0, -> 1 at p = 1."""
    progress = check_number(progress, "progress", who="dann_lambda", low=0, high=1)
    gamma = check_number(gamma, "gamma", who="dann_lambda", low=0, low_open=True)
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def dann_loss(source_features: torch.Tensor, target_features: torch.Tensor,
              discriminator: nn.Module, scale: float) -> torch.Tensor:
    """Domain-classification loss of DANN, through gradient reversal.

    The discriminator maps ``(n, d)`` features to ``(n,)`` or ``(n, 1)`` logits of "is target";
    the loss is the binary cross-entropy averaged over the source (label 0) and target (label 1)
    rows together. Add it to the task loss and minimise everything: the discriminator learns to
    tell the domains apart, the encoder (behind the reversal, weighted by ``scale``) to prevent it.
    """
    who = "dann_loss"
    check_tensor(source_features, "source_features", who=who, ndim=2, dtype="float", finite=True,
                 non_empty=True)
    check_tensor(target_features, "target_features", who=who, ndim=2, dtype="float", finite=True,
                 non_empty=True)
    if source_features.shape[1] != target_features.shape[1]:
        raise PriorlabError(f"{who}: source and target features must have the same width, got "
                            f"{source_features.shape[1]} and {target_features.shape[1]}")
    if not isinstance(discriminator, nn.Module):
        raise PriorlabError(f"{who}: discriminator must be an nn.Module, got {type(discriminator).__name__}")
    check_same_dtype(who, source_features=source_features, target_features=target_features,
                     discriminator=next(discriminator.parameters(), source_features))
    features = torch.cat([source_features, target_features])
    logits = discriminator(reverse_gradient(features, scale))
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits.squeeze(1)
    if logits.shape != (len(features),):
        raise PriorlabError(f"{who}: the discriminator must return one logit per row, shape "
                            f"({len(features)},) or ({len(features)}, 1), got {tuple(logits.shape)}")
    domain = torch.cat([torch.zeros(len(source_features)), torch.ones(len(target_features))])
    return F.binary_cross_entropy_with_logits(logits, domain.to(logits))
