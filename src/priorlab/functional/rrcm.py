"""rRCM losses: Lei et al., "Robust Representation Consistency Model via Contrastive Denoising"
(arXiv:2501.13094; official code github.com/jiachenlei/rRCM).

Pretraining aligns representations along a noising trajectory ``x_t = x + sigma_t * eps`` on
the Karras grid ``sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``:

- instance discrimination between two augmented views at the smallest noise level, online
  encoder against an EMA target (InfoNCE, temperature tau), symmetric: view a against the
  target's view b plus view b against the target's view a, summed;
- consistency between temporally adjacent points ``x_{t_i}`` and ``x_{t_{i+1}}`` (same noise
  ``eps``), online against its own detached output (InfoNCE over the batch).

The official trainer draws ONE trajectory index per batch (every example shares ``t_i``).

Fine-tuning under Gaussian noise adds the consistency regulariser of Jeong & Shin
(arXiv:2006.04062): ``lbd * mean_j KL(avg || p_j) + eta * H(avg)`` over ``m`` noisy copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.contrastive import l2_normalize
from priorlab.validation import check_number, check_tensor, describe


def karras_sigmas(num_scales: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> torch.Tensor:
    """The noise levels, from ``sigma_max`` (index 0) down to ``sigma_min`` (index N-1)."""
    if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 2:
        raise PriorlabError(f"num_scales must be an integer >= 2, got {num_scales!r}")
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max) or rho <= 0:
        raise PriorlabError(f"need 0 < sigma_min < sigma_max (finite) and rho > 0, got "
                            f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}, rho={rho!r}")
    ramp = torch.arange(num_scales, dtype=torch.float64) / (num_scales - 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).float()


def info_nce(query: torch.Tensor, key: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """Per-example InfoNCE: row i of ``key`` is the positive of row i of ``query``, the other
    rows are negatives; cosine similarities over temperature ``tau``. Returns shape (batch,)."""
    who = "info_nce"
    query = check_tensor(query, "query", who=who, min_ndim=2, dtype="float", finite=True)
    key = check_tensor(key, "key", who=who, min_ndim=2, dtype="float", finite=True)
    if query.shape != key.shape or query.dtype != key.dtype:
        raise PriorlabError(f"{who}: query and key must have one shape (batch, dim) and dtype, got "
                            f"{describe(query)} and {describe(key)}")
    if query.shape[1:].numel() == 0:
        raise PriorlabError(f"{who}: query and key have no features ({describe(query)})")
    tau = check_number(tau, "tau", who=who, low=0, low_open=True, hint="rRCM uses 0.2")
    q = l2_normalize(query.flatten(1), dim=1)
    k = l2_normalize(key.flatten(1), dim=1)
    logits = q @ k.T / tau
    loss = torch.logsumexp(logits, dim=1) - logits.diagonal()
    if not bool(torch.isfinite(loss).all()):  # cosines / tau overflowed the dtype
        raise PriorlabError(f"{who}: tau {tau:g} is too small for {str(query.dtype).removeprefix('torch.')}"
                            f": the similarities overflow; use a larger temperature")
    return loss


def rrcm_pretrain_loss(encoder: nn.Module, target_encoder: nn.Module, x: torch.Tensor,
                       view_a: torch.Tensor, view_b: torch.Tensor, sigmas: torch.Tensor,
                       indices: torch.Tensor, tau: float = 0.2,
                       noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The two rRCM pretraining terms, averaged over the batch.

    ``encoder(x_noisy, sigma)`` must return ``(contrastive_projection, consistency_projection)``
    (two heads on a shared trunk). ``indices`` (batch,) pick ``sigma_i`` and its neighbour
    ``sigma_{i+1}`` (so each index must be <= N-2); the official trainer repeats one index over
    the batch (:func:`batch_step_indices`). ``view_a`` / ``view_b`` are two augmentations of
    ``x``, compared at the smallest noise level ``sigmas[-1]`` in both directions (summed).
    """
    if indices.is_floating_point() or indices.shape != (len(x),):
        raise PriorlabError(f"indices must be integers, one per example ({len(x)}), got "
                            f"{tuple(indices.shape)} {indices.dtype}")
    if len(indices) and (indices.min() < 0 or indices.max() > len(sigmas) - 2):
        raise PriorlabError(f"indices must lie in [0, {len(sigmas) - 2}] so that each has a "
                            "neighbouring, smaller noise level")
    if view_a.shape != x.shape or view_b.shape != x.shape:
        raise PriorlabError("view_a and view_b must have the shape of x (two augmentations of it)")
    if noise is None:
        noise = torch.randn_like(x)
    expand = (-1,) + (1,) * (x.ndim - 1)
    sigma_min = sigmas[-1].expand(len(x))
    noisy_a = view_a + sigma_min.view(expand) * noise
    noisy_b = view_b + sigma_min.view(expand) * noise
    with torch.no_grad():
        key_a, key_b = (target_encoder(v, sigma_min)[0] for v in (noisy_a, noisy_b))
    contrastive = (info_nce(encoder(noisy_a, sigma_min)[0], key_b, tau)
                   + info_nce(encoder(noisy_b, sigma_min)[0], key_a, tau))
    s_far, s_near = sigmas[indices], sigmas[indices + 1]
    h_far = encoder(x + s_far.view(expand) * noise, s_far)[1]
    with torch.no_grad():
        h_near = encoder(x + s_near.view(expand) * noise, s_near)[1]
    consistency = info_nce(h_far, h_near, tau)
    return {"contrastive": contrastive.mean(), "consistency": consistency.mean()}


def batch_step_indices(num_scales: int, batch: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """One trajectory index, uniform over ``[0, num_scales - 2]``, repeated for the whole batch
    (the official ``UniformSingularStepSampler``)."""
    if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 2:
        raise PriorlabError(f"num_scales must be an integer >= 2, got {num_scales!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise PriorlabError(f"batch must be an integer >= 1, got {batch!r}")
    return torch.randint(0, num_scales - 1, (1,), generator=generator).repeat(batch)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * online``, parameter by parameter."""
    if not 0 <= decay <= 1:
        raise PriorlabError(f"EMA decay must lie in [0, 1], got {decay!r}")
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(decay).add_(o.detach(), alpha=1 - decay)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


def noise_consistency_loss(logits: list[torch.Tensor] | tuple[torch.Tensor, ...],
                           lbd: float = 20.0, eta: float = 0.5) -> torch.Tensor:
    """Jeong & Shin's consistency term over ``m >= 2`` logit batches of noisy copies:
    ``lbd * mean_j KL(avg_softmax || softmax_j) + eta * H(avg_softmax)``, averaged over the batch."""
    who = "noise_consistency_loss"
    if not isinstance(logits, (list, tuple)) or len(logits) < 2:
        raise PriorlabError(f"{who}: logits must be a list of >= 2 logit batches (batch, classes), "
                            f"one per noisy copy, got {describe(logits)}"
                            + (f" of length {len(logits)}" if isinstance(logits, (list, tuple)) else ""))
    for i, lg in enumerate(logits):
        check_tensor(lg, f"logits[{i}]", who=who, ndim=2, dtype="float", non_empty=True,
                     finite=True)
        if lg.shape != logits[0].shape or lg.dtype != logits[0].dtype:
            raise PriorlabError(f"{who}: logits[{i}] must match logits[0] ({describe(logits[0])}), "
                                f"got {describe(lg)}")
    lbd = check_number(lbd, "lbd", who=who, low=0)
    eta = check_number(eta, "eta", who=who, low=0)
    # Everything in log space: log(avg) from a logsumexp of log-softmaxes, never the log of an
    # underflowed softmax (F.kl_div's gradient in its target is log(target) + 1 = -inf at 0,
    # which made NaN gradients for logits of scale ~1e4). Same values as the direct formula.
    log_probs = torch.stack([F.log_softmax(lg, dim=1) for lg in logits])  # (m, batch, classes)
    log_avg = torch.logsumexp(log_probs, dim=0) - math.log(len(logits))
    avg = log_avg.exp()
    kl = (avg * (log_avg - log_probs)).sum(2).mean(0)
    entropy = -(avg * log_avg).sum(1)
    loss = (lbd * kl + eta * entropy).mean()
    if not bool(torch.isfinite(loss)):
        raise PriorlabError(f"{who}: the logits are too far apart for "
                            f"{str(logits[0].dtype).removeprefix('torch.')}: lbd * KL overflows; "
                            "check the model's outputs or use float64")
    return loss
