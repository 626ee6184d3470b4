"""Self-supervised item-tower loss with feature masking (Yao et al., CIKM 2021).

"Self-supervised Learning for Large-scale Item Recommendations", Tiansheng Yao et al.,
arXiv:2007.12865. An item is a set of categorical features; two views of each item are made by
masking two *complementary* halves of its features (plus dropout on multi-valued features), both
views go through the item tower, and an InfoNCE loss with in-batch negatives pulls the two
embeddings of one item together (paper eq. for L_self):

    L_self = -1/N sum_i log exp(s(z_i, z'_i) / tau) / sum_j exp(s(z_i, z'_j) / tau)

with s the cosine similarity. The total loss is L_main + alpha L_self.

Which half is masked: random feature masking (RFM) picks a random half; correlated feature
masking (CFM) picks a random seed feature and masks it together with the features that share
the most mutual information with it, so the model cannot recover a masked feature from an
unmasked twin (e.g. release year from decade) and must learn the feature relations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.rrcm import info_nce
from priorlab.validation import check_number, check_tensor, describe


def feature_mutual_information(codes: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pairwise mutual information (nats) between categorical features.

    ``codes``: (n_rows, n_features) integer categories (one value per row and feature; for a
    multi-valued feature pass e.g. its first token). Returns the symmetric (n_features,
    n_features) matrix MI(V_i, V_j) = sum p(v_i, v_j) log p(v_i, v_j) / (p(v_i) p(v_j)) of the
    empirical joint distribution; the diagonal holds each feature's entropy.
    """
    codes = torch.as_tensor(codes)
    check_tensor(codes, "codes", who="feature_mutual_information", ndim=2, dtype="integer",
                 non_empty=True)
    codes = codes.numpy()
    n, k = codes.shape
    mi = np.zeros((k, k))
    for i in range(k):
        for j in range(i, k):
            _, joint = np.unique(codes[:, [i, j]], axis=0, return_counts=True)
            _, pi = np.unique(codes[:, i], return_counts=True)
            _, pj = np.unique(codes[:, j], return_counts=True)
            # MI = H(i) + H(j) - H(i, j)
            value = _entropy(pi / n) + _entropy(pj / n) - _entropy(joint / n)
            mi[i, j] = mi[j, i] = max(value, 0.0)
    return mi


def _entropy(p: np.ndarray) -> float:
    return float(-(p * np.log(p)).sum())


def _check_count(n_features: int, batch: int, who: str) -> tuple[int, int]:
    n_features = check_number(n_features, "n_features", who=who, low=2, integer=True,
                              hint="masking needs at least two features to split into views")
    batch = check_number(batch, "batch", who=who, low=1, integer=True)
    return n_features, batch


def random_feature_masking(n_features: int, batch: int,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RFM: per example, a uniformly random half of the features (floor(n/2)) is masked in view
    a and the complementary half in view b. Returns two boolean (batch, n_features) masks, True
    = masked."""
    n_features, batch = _check_count(n_features, batch, "random_feature_masking")
    scores = torch.rand(batch, n_features, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    mask_a = ranks < n_features // 2
    return mask_a, ~mask_a


def correlated_feature_masking(mutual_information: np.ndarray | torch.Tensor, batch: int,
                               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CFM: per example, a uniformly random seed feature and the floor(n/2) - 1 other features
    with the highest mutual information with it are masked in view a; the complement in view b.

    ``mutual_information``: (n_features, n_features) symmetric, e.g. from
    :func:`feature_mutual_information` (ties broken by feature index). Returns two boolean
    (batch, n_features) masks, True = masked.
    """
    who = "correlated_feature_masking"
    try:
        mi = torch.as_tensor(mutual_information, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise PriorlabError(f"{who}: mutual_information must be a (n_features, n_features) array, "
                            f"got {describe(mutual_information)}") from error
    check_tensor(mi, "mutual_information", who=who, ndim=2, finite=True)
    n_features = mi.shape[0]
    if mi.shape != (n_features, n_features):
        raise PriorlabError(f"{who}: mutual_information must be square (n_features, n_features), "
                            f"got {describe(mi)}")
    if bool((mi < 0).any()) or not torch.allclose(mi, mi.T):
        raise PriorlabError(f"{who}: mutual_information must be symmetric and >= 0; compute it "
                            "with feature_mutual_information")
    n_features, batch = _check_count(n_features, batch, who)
    # For every possible seed, the features it masks: itself, then the highest-MI others.
    partner_mi = mi.clone()
    partner_mi.fill_diagonal_(float("inf"))
    ranked = torch.as_tensor(np.argsort(-partner_mi.numpy(), axis=1, kind="stable"))
    per_seed = torch.zeros(n_features, n_features, dtype=torch.bool)
    per_seed.scatter_(1, ranked[:, :n_features // 2], True)
    seeds = torch.randint(n_features, (batch,), generator=generator)
    mask_a = per_seed[seeds]
    return mask_a, ~mask_a


def apply_feature_mask(features: Sequence[torch.Tensor], mask: torch.Tensor, dropout: float = 0.0,
                       generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """One view of a batch: masked features become all padding (token 0, "absent"), and each
    remaining token of a multi-valued feature (width > 1) is dropped with probability
    ``dropout`` (the paper's second augmentation stage). Inputs are not modified."""
    who = "apply_feature_mask"
    if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
        raise PriorlabError(f"{who}: features must be a list of token tensors, one per feature, got "
                            f"{describe(features)}")
    if not features:
        raise PriorlabError(f"{who}: features is empty")
    check_tensor(features[0], "features[0]", who=who, ndim=2, dtype="integer")
    mask = check_tensor(mask, "mask", who=who, shape=(features[0].shape[0], len(features)), dtype="bool",
                        hint="one row per example, one column per feature (True = masked)")
    dropout = check_number(dropout, "dropout", who=who, low=0, high=1, high_open=True)
    view = []
    for f, tokens in enumerate(features):
        check_tensor(tokens, f"features[{f}]", who=who, ndim=2, shape=(mask.shape[0], None),
                     dtype="integer")
        keep = ~mask[:, f:f + 1]
        if dropout > 0 and tokens.shape[1] > 1:
            keep = keep & (torch.rand(tokens.shape, generator=generator) >= dropout)
        view.append(torch.where(keep, tokens, torch.zeros_like(tokens)))
    return view


def item_ssl_loss(item_tower: Callable[[list[torch.Tensor]], torch.Tensor],
                  features: Sequence[torch.Tensor], masks: tuple[torch.Tensor, torch.Tensor],
                  tau: float = 0.1, dropout: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The auxiliary loss L_self on a batch of items: the tower embeds the two masked views and
    InfoNCE (cosine / ``tau``, in-batch negatives, view a as queries) is averaged over the batch.

    ``masks`` = (mask_a, mask_b) from :func:`random_feature_masking` or
    :func:`correlated_feature_masking`. Needs at least two items (one positive, >= 1 negative).
    """
    who = "item_ssl_loss"
    if not callable(item_tower):
        raise PriorlabError(f"{who}: item_tower must map a list of features to embeddings, got "
                            f"{describe(item_tower)}")
    if not isinstance(masks, (tuple, list)) or len(masks) != 2:
        raise PriorlabError(f"{who}: masks must be the pair (mask_a, mask_b), got {describe(masks)}")
    if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
        raise PriorlabError(f"{who}: features must be a list of token tensors, one per feature, got "
                            f"{describe(features)}")
    for f, tokens in enumerate(features):
        check_tensor(tokens, f"features[{f}]", who=who, ndim=2, dtype="integer",
                     hint="one row of token ids per item")
    if features and features[0].shape[0] < 2:
        raise PriorlabError("item_ssl_loss: needs a batch of at least two items (in-batch negatives)")
    view_a = apply_feature_mask(features, masks[0], dropout, generator)
    view_b = apply_feature_mask(features, masks[1], dropout, generator)
    return info_nce(item_tower(view_a), item_tower(view_b), tau=tau).mean()
