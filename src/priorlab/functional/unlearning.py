"""Parameter-space penalties of Adapt-then-Unlearn (seed 21) as pure functions.

Tiwary, Guha, Panda, Prathosh, "Adapt then Unlearn: Exploring Parameter Space Semantics for
Unlearning in Generative Adversarial Networks", arXiv 2309.14054 (code: atriguha/Adapt_Unlearn).

- Stage 1 adapts the pretrained generator (parameters theta_G) to negative samples with the EWC
  penalty of Li et al., "Few-shot Image Generation with Elastic Weight Consolidation" (NeurIPS
  2020, arXiv 2012.02780): ``lambda * sum_i F_i (theta_i - theta_G,i)^2`` — the family's one
  EWC, :class:`priorlab.continual.regularisers.ParameterAnchor` with a Fisher importance —
  giving theta_N.
- Stage 2 retrains theta (from theta_G) on positive samples with a repulsion regulariser
  ``gamma * R(d)`` where ``d`` is the squared distance between theta and theta_N
  (:func:`parameter_distance`) and R is one of the paper's three forms
  (:func:`repulsion_loss`): ``inverse`` 1/d, ``exp`` exp(-d), ``negative`` -d.

Parameters are passed as mappings ``name -> tensor`` (e.g. ``dict(model.named_parameters())``)
so the functions work with any module.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor

REPULSION_KINDS = ("inverse", "exp", "negative")


def _check_pair(params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], who: str,
                anchor_name: str) -> None:
    if not isinstance(params, Mapping) or not isinstance(anchor, Mapping):
        raise PriorlabError(f"{who}: pass parameters as mappings name -> tensor, e.g. "
                            "dict(model.named_parameters())")
    if not params:
        raise PriorlabError(f"{who}: no parameters given")
    missing = sorted(set(params) - set(anchor))
    if missing:
        raise PriorlabError(f"{who}: {anchor_name} lacks parameter(s) {missing[:3]}"
                            f"{' ...' if len(missing) > 3 else ''}")
    for name, p in params.items():
        check_tensor(p, f"parameter {name!r}", who=who, dtype="float")
        check_tensor(anchor[name], f"{anchor_name} {name!r}", who=who, shape=tuple(p.shape),
                     dtype="float", finite=True)


def parameter_distance(params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], *,
                       normalise: bool = True) -> torch.Tensor:
    """Squared distance between ``params`` and ``anchor`` (the adapted theta_N).

    ``normalise=True`` (the official code): the mean over tensors of each tensor's mean squared
    difference, so the scale does not grow with the network. ``normalise=False``: the paper's
    plain ``||theta - theta_N||^2``.
    """
    _check_pair(params, anchor, "parameter_distance", "anchor")
    per_tensor = [(p - anchor[n]).pow(2) for n, p in params.items()]
    if normalise:
        return torch.stack([d.mean() for d in per_tensor]).mean()
    return torch.stack([d.sum() for d in per_tensor]).sum()


def repulsion_loss(params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], *,
                   kind: str = "inverse", normalise: bool = True, scale: float = 1.0,
                   eps: float = 1e-12) -> torch.Tensor:
    """The repulsion regulariser R(d), d = :func:`parameter_distance` / ``scale``; it falls as
    theta moves away from ``anchor``, so minimising it pushes theta away from the adapted
    parameters.

    kind ``inverse``: 1 / d (the form active in the official code); ``exp``: exp(-d) (bounded);
    ``negative``: -d (unbounded below). ``scale`` (1 in the paper) sets the unit of distance,
    e.g. the distance at the start of stage 2. ``eps`` keeps 1/d finite at d = 0.
    """
    if kind not in REPULSION_KINDS:
        raise did_you_mean(kind, REPULSION_KINDS, "repulsion kind")
    eps = check_number(eps, "eps", who="repulsion_loss", low=0, low_open=True)
    scale = check_number(scale, "scale", who="repulsion_loss", low=0, low_open=True)
    d = parameter_distance(params, anchor, normalise=normalise) / scale
    if kind == "inverse":
        return 1.0 / (d + eps)
    if kind == "exp":
        return torch.exp(-d)
    return -d
