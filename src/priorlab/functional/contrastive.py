"""Contrastive losses: supervised contrastive (SupCon) and spectral contrastive.

- :func:`supcon_loss`: Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020,
  arXiv:2004.11362 (official code: github.com/HobbitLong/SupContrast, ``SupConLoss``). For each
  anchor i with positives P(i) (other samples / views with the same label) and all other
  samples A(i)::

      l_i = -(T / T_base) * 1/|P(i)| * sum_{p in P(i)}
            log( exp(z_i.z_p / T) / sum_{a in A(i)} exp(z_i.z_a / T) )

  on l2-normalised features, averaged over all anchors (an anchor without positives adds 0, as
  in the official code).
- :func:`spectral_contrastive_loss`: HaoChen, Wei, Gaidon & Ma, "Provable Guarantees for
  Self-Supervised Deep Learning with Spectral Contrastive Loss", NeurIPS 2021,
  arXiv:2106.04156. With z1_i, z2_i two views of sample i::

      L = -2 * mean_i z1_i.z2_i + mean_{i != j} (z1_i.z2_j)^2

Both are used by Xue et al., "Investigating the Benefits of Projection Head for Representation
Learning", ICLR 2024, arXiv:2403.11391.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor, describe


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x / ||x||`` along ``dim`` (zero vectors stay zero), for any finite magnitude.

    ``F.normalize`` squares the entries, so vectors of norm beyond ~1e19 (float32) overflow and
    come back as zeros, and tiny ones underflow; scaling each vector by a power of two first
    (exact in floating point) gives bit-identical results on ordinary inputs and the right
    direction on extreme ones.
    """
    _, exponent = torch.frexp(x.detach().abs().amax(dim, keepdim=True))
    # after scaling every non-zero norm is >= 0.5, so the eps only guards exact zeros
    return F.normalize(torch.ldexp(x, -exponent), dim=dim, eps=torch.finfo(x.dtype).tiny)


def _check_features(name: str, x, dims: tuple[int, ...], who: str) -> torch.Tensor:
    x = check_tensor(x, name, who=who, ndim=dims, dtype="float", finite=True,
                     hint="check the model's outputs")
    if x.shape[-1] == 0:
        raise PriorlabError(f"{who}: {name} has no feature dimension ({describe(x)})")
    return x


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                base_temperature: float | None = None) -> torch.Tensor:
    """SupCon loss of ``features`` (N, D) or (N, views, D) with integer ``labels`` (N,).

    Features are l2-normalised here. ``base_temperature`` defaults to ``temperature`` (the
    official default pair is 0.07 / 0.07, so the scale factor is 1).
    """
    who = "supcon_loss"
    hint = "SupCon's default is 0.07"
    temperature = check_number(temperature, "temperature", who=who, low=0, low_open=True, hint=hint)
    if base_temperature is not None:
        base_temperature = check_number(base_temperature, "base_temperature", who=who, low=0,
                                        low_open=True, hint=hint)
    base_temperature = temperature if base_temperature is None else base_temperature
    features = _check_features("features", features, (2, 3), who)
    if features.dim() == 2:
        features = features.unsqueeze(1)
    n, views = features.shape[:2]
    check_tensor(labels, "labels", who=who, shape=(n,), dtype="integer",
                 hint="pass integer classes, one per sample")
    if n * views < 2:
        raise PriorlabError(f"{who}: features must hold at least two samples or views to contrast, "
                            f"got {n} sample(s) x {views} view(s)")
    z = l2_normalize(features, dim=-1).transpose(0, 1).reshape(n * views, -1)  # view-major
    y = labels.repeat(views)
    logits = z @ z.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # stability only
    not_self = ~torch.eye(n * views, dtype=torch.bool, device=z.device)
    positives = (y[:, None] == y[None, :]) & not_self
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1,
                                        keepdim=True)
    n_pos = positives.sum(1).clamp(min=1)
    mean_log_prob_pos = (log_prob * positives).sum(1) / n_pos
    loss = -(temperature / base_temperature) * mean_log_prob_pos.mean()
    if not bool(torch.isfinite(loss)):  # similarities / temperature overflowed the dtype
        raise PriorlabError(f"{who}: temperature {temperature:g} (base_temperature "
                            f"{base_temperature:g}) overflows the loss in "
                            f"{str(z.dtype).removeprefix('torch.')}; use a larger temperature")
    return loss


def spectral_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Spectral contrastive loss of paired embeddings ``z1``, ``z2`` (N, D), N >= 2 (not normalised)."""
    who = "spectral_contrastive_loss"
    z1 = _check_features("z1", z1, (2,), who)
    z2 = _check_features("z2", z2, (2,), who)
    if z1.shape != z2.shape or z1.dtype != z2.dtype:
        raise PriorlabError(f"{who}: z1 and z2 must have one shape and dtype (row i of each is a "
                            f"view of sample i), got {describe(z1)} and {describe(z2)}")
    n = z1.shape[0]
    if n < 2:
        raise PriorlabError(f"{who}: z1 and z2 need at least 2 pairs (rows), for negatives, got "
                            f"{n}")
    gram = z1 @ z2.T
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z1.device)
    loss = -2 * gram.diagonal().mean() + (gram[off_diagonal] ** 2).mean()
    # the loss grows with |z|^4, so embeddings beyond ~1e9 (float32) overflow it: the true value
    # is not representable in the dtype, and returning inf would be a silent wrong answer
    if not bool(torch.isfinite(loss)):
        largest = max(float(z1.abs().max()), float(z2.abs().max()))
        raise PriorlabError(f"{who}: z1 and z2 are too large for {str(z1.dtype).removeprefix('torch.')}"
                            f" (largest |entry| {largest:.3g}): the loss overflows; scale the "
                            "embeddings down or compute in float64")
    return loss
