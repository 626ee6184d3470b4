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

import math

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError


def _check_features(name: str, x, dims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() not in dims:
        got = (f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
               else type(x).__name__)
        want = " or ".join(f"{d}-D" for d in dims)
        raise PriorlabError(f"{name} must be a {want} floating-point tensor, got {got}")
    if not torch.isfinite(x).all():
        raise PriorlabError(f"{name} hold NaN or inf; check the model's outputs")
    return x


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                base_temperature: float | None = None) -> torch.Tensor:
    """SupCon loss of ``features`` (N, D) or (N, views, D) with integer ``labels`` (N,).

    Features are l2-normalised here. ``base_temperature`` defaults to ``temperature`` (the
    official default pair is 0.07 / 0.07, so the scale factor is 1).
    """
    for name, value in (("temperature", temperature), ("base_temperature", base_temperature)):
        if value is None and name == "base_temperature":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise PriorlabError(f"{name} must be a finite number > 0, got {value!r} "
                                "(SupCon's default is 0.07)")
    base_temperature = temperature if base_temperature is None else base_temperature
    features = _check_features("features", features, (2, 3))
    if features.dim() == 2:
        features = features.unsqueeze(1)
    n, views = features.shape[:2]
    if (not isinstance(labels, torch.Tensor) or labels.is_floating_point()
            or labels.dtype == torch.bool or tuple(labels.shape) != (n,)):
        got = (f"{labels.dtype} tensor of shape {tuple(labels.shape)}"
               if isinstance(labels, torch.Tensor) else type(labels).__name__)
        raise PriorlabError(f"labels must be integer classes of shape ({n},), one per sample, "
                            f"got {got}")
    if n * views < 2:
        raise PriorlabError("SupCon needs at least two samples or views to contrast")
    z = F.normalize(features, dim=-1).transpose(0, 1).reshape(n * views, -1)  # view-major
    y = labels.repeat(views)
    logits = z @ z.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # stability only
    not_self = ~torch.eye(n * views, dtype=torch.bool, device=z.device)
    positives = (y[:, None] == y[None, :]) & not_self
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1,
                                        keepdim=True)
    n_pos = positives.sum(1).clamp(min=1)
    mean_log_prob_pos = (log_prob * positives).sum(1) / n_pos
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def spectral_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Spectral contrastive loss of paired embeddings ``z1``, ``z2`` (N, D), N >= 2 (not normalised)."""
    z1 = _check_features("z1", z1, (2,))
    z2 = _check_features("z2", z2, (2,))
    if z1.shape != z2.shape:
        raise PriorlabError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must have the same "
                            "shape: row i of each is a view of sample i")
    n = z1.shape[0]
    if n < 2:
        raise PriorlabError("the spectral contrastive loss needs at least 2 pairs for negatives")
    gram = z1 @ z2.T
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z1.device)
    return -2 * gram.diagonal().mean() + (gram[off_diagonal] ** 2).mean()
