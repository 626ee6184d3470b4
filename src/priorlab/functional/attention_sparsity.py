"""Sparse regularisation of self-attention maps and global magnitude pruning, after
"Sparse then Prune: Toward Efficient Vision Transformers" (Prasetyo et al., arXiv:2307.11988;
official code yogiprsty/Sparse-ViT, ``model.py``, ``train.py``, ``prune.py``).

Training minimises ``CE + lambda * R(A)`` with ``R(A) = mean log(1 + A^2)`` over the entries of the
softmax attention matrices ``A`` (batch x heads x queries x keys), ``lambda = 0.01``. In the
official code each block computes its own ``R`` but the encoder loop keeps only the **last**
block's value, so only the last block is regularised; ``blocks="last"`` (the default) does the
same, ``blocks="all"`` averages ``R`` over every block (the reading of the paper's text).

Note: on a softmax row (entries >= 0 summing to 1) ``log(1 + a^2)`` is convex on [0, 1], so
``R`` is smallest for uniform rows and largest for one-hot rows: with row-stochastic maps the
penalty spreads attention rather than concentrating it.

After training, :func:`global_magnitude_prune` zeroes the smallest-``|w|`` fraction of the pooled
weights of every Linear, Conv2d and LayerNorm module (biases, embeddings and tokens are kept), as
the official ``prune.py`` does with ``torch.nn.utils.prune.global_unstructured`` and
``L1Unstructured`` (``round(sparsity * n)`` weights pruned); the model is tested without
fine-tuning. The per-row :func:`priorlab.sparsity.pruning.magnitude_mask` is a different rule
(every row pruned to the same sparsity) and is not used here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor

BLOCKS = ("last", "all")
PRUNABLE = (nn.Linear, nn.Conv2d, nn.LayerNorm)  # the official prune.py's module kinds


def attention_log_penalty(attention: torch.Tensor) -> torch.Tensor:
    """``mean log(1 + A^2)`` over every entry of one attention tensor (any shape; the official
    code passes batch x heads x queries x keys softmax probabilities)."""
    who = "attention_log_penalty"
    check_tensor(attention, "attention", who=who, min_ndim=2, dtype="float", non_empty=True,
                 finite=True, hint="pass softmax attention probabilities (..., queries, keys)")
    if bool((attention < 0).any()) or bool((attention > 1 + 1e-5).any()):
        raise PriorlabError(f"{who}: attention entries must lie in [0, 1] (softmax "
                            f"probabilities), got range [{attention.min().item():.3g}, "
                            f"{attention.max().item():.3g}]")
    return torch.log1p(attention.square()).mean()


def attention_sparsity_loss(attentions: Sequence[torch.Tensor], blocks: str = "last") -> torch.Tensor:
    """The regulariser over a model's attention maps, one tensor per block in forward order.

    ``blocks="last"``: the last block's penalty only (the official code's behaviour);
    ``"all"``: the mean of every block's penalty.
    """
    if blocks not in BLOCKS:
        raise did_you_mean(blocks, BLOCKS, "blocks")
    if isinstance(attentions, torch.Tensor) or not len(attentions):
        raise PriorlabError("attention_sparsity_loss: attentions must be a non-empty sequence of "
                            "tensors, one per block (e.g. what AttentionViT returns)")
    if blocks == "last":
        return attention_log_penalty(attentions[-1])
    return torch.stack([attention_log_penalty(a) for a in attentions]).mean()


def prunable_weights(model: nn.Module, module_types: tuple[type, ...] = PRUNABLE) -> list[nn.Parameter]:
    """The ``weight`` parameters of ``model``'s modules of ``module_types``, in module order."""
    if not isinstance(model, nn.Module):
        raise PriorlabError(f"prunable_weights: model must be an nn.Module, got {type(model).__name__}")
    weights = [m.weight for m in model.modules()
               if isinstance(m, module_types) and isinstance(getattr(m, "weight", None), nn.Parameter)]
    if not weights:
        names = ", ".join(t.__name__ for t in module_types)
        raise PriorlabError(f"prunable_weights: the model has no {names} module with a weight")
    return weights


def global_magnitude_masks(weights: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Boolean masks (``True`` = pruned) marking the ``round(sparsity * n)`` smallest ``|w|`` of
    all ``weights`` pooled together (``n`` weights in all; ties go to the earlier position)."""
    who = "global_magnitude_masks"
    sparsity = check_number(sparsity, "sparsity", who=who, low=0.0, high=1.0, high_open=True,
                            hint="the fraction of all pooled weights to prune, e.g. 0.5")
    if not len(weights):
        raise PriorlabError(f"{who}: weights is empty")
    for i, w in enumerate(weights):
        check_tensor(w, f"weights[{i}]", who=who, dtype="float", finite=True)
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    n_pruned = round(sparsity * flat.numel())
    pruned = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    pruned[torch.sort(flat, stable=True).indices[:n_pruned]] = True
    return [m.view_as(w) for m, w in zip(pruned.split([w.numel() for w in weights]), weights)]


@torch.no_grad()
def global_magnitude_prune(model: nn.Module, sparsity: float,
                           module_types: tuple[type, ...] = PRUNABLE) -> float:
    """Zero, in place, the globally smallest-magnitude ``sparsity`` fraction of the weights of
    ``model``'s ``module_types`` modules; returns the fraction actually zeroed."""
    weights = prunable_weights(model, module_types)
    masks = global_magnitude_masks(weights, sparsity)
    for weight, mask in zip(weights, masks):
        weight.masked_fill_(mask, 0.0)
    return float(sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks))


def sparse_regularised_loss(logits: torch.Tensor, targets: torch.Tensor,
                            attentions: Sequence[torch.Tensor], strength: float = 0.01,
                            blocks: str = "last") -> torch.Tensor:
    """The paper's training loss ``CE(logits, targets) + strength * R(A)`` (official
    ``strength = 0.01``, ``blocks="last"``); ``strength = 0`` is plain cross-entropy."""
    strength = check_number(strength, "strength", who="sparse_regularised_loss", low=0.0,
                            hint="the paper's lambda, 0.01")
    task = nn.functional.cross_entropy(logits, targets)
    if strength == 0:
        return task
    return task + strength * attention_sparsity_loss(attentions, blocks)
