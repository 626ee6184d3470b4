"""BEER: the Bellman-equation bound on the cosine similarity of consecutive representations.

Qiang He, Tianyi Zhou, Meng Fang, Setareh Maghsudi, "Adaptive Regularization of Representation Rank as an
Implicit Constraint of Bellman Equation", ICLR 2024, arXiv:2404.12754.

A critic ``Q(s, a) = <phi(s, a), w>`` with penultimate features ``phi`` and last-layer weight
``w`` that satisfies the Bellman equation ``Q(s, a) = r + gamma Q(s', a')`` has
``<phi - gamma phi', w> = r``, so ``||phi - gamma phi'|| >= |r| / ||w||``. Expanding the square
gives the paper's upper bound on the cosine similarity of consecutive representations::

    cos(phi, phi') <= B = (||phi||^2 + gamma^2 ||phi'||^2 - r^2 / ||w||^2) / (2 gamma ||phi|| ||phi'||)

BEER adds to the critic loss ``beta * mean ReLU(cos(phi, phi') - B)``: representations of
consecutive pairs may be similar (low rank) only as far as the Bellman equation allows.

As in the official code (sweetice/BEER-ICLR2024, ``BEER.py``, ``BEER.train``):

- ``phi`` is the online critic's feature of the sampled ``(s, a)`` and carries the gradient;
- the cosine uses the *target* critic's feature of ``(s', pi_target(s'))`` (``phi_next``);
- the bound is computed without gradient; its numerator uses the *online* critic's feature of
  ``(s', pi(s'))`` (``phi_next_online``), its denominator ``||phi|| ||phi_next||``;
- ``w`` is the critic's last-layer weight (bias excluded); terminal transitions are not masked;
- ``beta = 1e-3`` and ``gamma = 0.99`` (the official code writes 0.99 into the bound; here it is
  the ``discount`` argument, equal by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor

BETA = 1e-3  # official regularisation strength
DISCOUNT = 0.99  # official discount, also the gamma of the bound
COSINE_EPS = 1e-6  # official eps of F.cosine_similarity

_WHO = "BEER"


def _check_features(phi, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    shape = None if like is None else tuple(like.shape)
    check_tensor(phi, name, who=_WHO, ndim=2, shape=shape, dtype="float", non_empty=True,
                 finite=True, hint="pass the critic's penultimate features, shape (batch, width)")
    return phi


def _check_inputs(phi, phi_next, reward, head_weight, discount, phi_next_online):
    _check_features(phi, "phi")
    _check_features(phi_next, "phi_next", like=phi)
    if phi_next_online is not None:
        _check_features(phi_next_online, "phi_next_online", like=phi)
    check_tensor(reward, "reward", who=_WHO, ndim=(1, 2), dtype="float", finite=True,
                 hint="pass one reward per transition, shape (batch,) or (batch, 1)")
    if reward.numel() != phi.shape[0] or (reward.ndim == 2 and reward.shape[1] != 1):
        raise PriorlabError(f"{_WHO}: reward must hold one value per transition, shape "
                            f"({phi.shape[0]},) or ({phi.shape[0]}, 1), got {tuple(reward.shape)}")
    check_tensor(head_weight, "head_weight", who=_WHO, dtype="float", finite=True, non_empty=True,
                 hint="pass the critic's last linear layer weight, shape (1, width)")
    if head_weight.numel() != phi.shape[1]:
        raise PriorlabError(f"{_WHO}: head_weight must have one entry per feature ({phi.shape[1]}), "
                            f"got shape {tuple(head_weight.shape)}; pass critic_head.weight")
    if not bool(head_weight.detach().pow(2).sum() > 0):
        raise PriorlabError(f"{_WHO}: head_weight is (numerically) zero, so Q is constant and "
                            "the bound's -r^2/||w||^2 is undefined; initialise the critic's last layer")
    return check_number(discount, "discount", who=_WHO, low=0.0, high=1.0, low_open=True,
                        hint=f"the official value is {DISCOUNT}")


def bellman_cosine_bound(phi: torch.Tensor, phi_next: torch.Tensor, reward: torch.Tensor,
                         head_weight: torch.Tensor, *, discount: float = DISCOUNT,
                         phi_next_online: torch.Tensor | None = None) -> torch.Tensor:
    """The bound ``B`` on ``cos(phi, phi_next)``, one value per transition, without gradient.

    Args:
        phi: online features of ``(s, a)``, shape (batch, width).
        phi_next: target-critic features of ``(s', a')``, shape (batch, width); the denominator.
        reward: shape (batch,) or (batch, 1).
        head_weight: the critic's last-layer weight ``w`` (any shape with ``width`` entries).
        discount: gamma in (0, 1].
        phi_next_online: online features of ``(s', pi(s'))`` for the numerator, as the official
            code uses; ``None`` uses ``phi_next`` (the paper's equation, one ``phi'``).
    """
    discount = _check_inputs(phi, phi_next, reward, head_weight, discount, phi_next_online)
    numerator_next = phi_next if phi_next_online is None else phi_next_online
    with torch.no_grad():
        norm = phi.norm(dim=1)
        w_sq = head_weight.detach().pow(2).sum()
        numerator = (norm.pow(2) + discount ** 2 * numerator_next.norm(dim=1).pow(2)
                     - reward.detach().reshape(-1).pow(2) / w_sq)
        denominator = 2 * discount * norm * phi_next.norm(dim=1)
        # an all-zero (dead ReLU) feature has no direction and its cosine is 0; the official
        # code divides by zero there (nan/inf), here such a pair is left unconstrained (B = inf)
        bound = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30),
                            torch.full_like(numerator, float("inf")))
    # +inf marks an unconstrained pair; NaN (inf / inf, inf - inf) or -inf (r^2 / ||w||^2) only
    # comes from an overflow
    if not bool((bound > float("-inf")).all()):
        raise PriorlabError(f"{_WHO}: the bound overflows {bound.dtype}: phi, phi_next or reward "
                            "too large to square, or head_weight too small; rescale them")
    return bound


def beer_regulariser(phi: torch.Tensor, phi_next: torch.Tensor, reward: torch.Tensor,
                     head_weight: torch.Tensor, *, beta: float = BETA, discount: float = DISCOUNT,
                     phi_next_online: torch.Tensor | None = None) -> torch.Tensor:
    """``beta * mean ReLU(cos(phi, phi_next) - B)``, to add to the critic loss (a scalar).

    Gradient flows into ``phi`` only (``phi_next`` comes from the target critic; pass it
    detached). Arguments as in :func:`bellman_cosine_bound`; ``beta >= 0`` (0 switches it off).
    """
    beta = check_number(beta, "beta", who=_WHO, low=0.0, hint=f"the official value is {BETA}")
    bound = bellman_cosine_bound(phi, phi_next, reward, head_weight, discount=discount,
                                 phi_next_online=phi_next_online)
    cosine = F.cosine_similarity(phi, phi_next.detach(), dim=1, eps=COSINE_EPS)
    loss = beta * F.relu(cosine - bound).mean()
    if not torch.isfinite(loss):
        raise PriorlabError(f"{_WHO}: the regulariser overflows {loss.dtype} (beta {beta:g}, bound "
                            f"down to {float(bound.min()):.3g}); lower beta or rescale reward")
    return loss
