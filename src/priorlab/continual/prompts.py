"""Prompts on a frozen ViT for rehearsal-free continual learning, and OVOR's outlier regulariser.

From "OVOR: OnePrompt with Virtual Outlier Regularization for Rehearsal-Free Class-Incremental
Learning" (Huang, Chen, Hsu, Yang, Chiu; ICLR 2024, arXiv:2402.04129; official code
jpmorganchase/ovor, ``learners/ood.py`` and ``learners/default.py``):

* :class:`SinglePrompt` -- OVOR's OnePrompt: ONE set of prefix key/value tokens per prompted
  block, shared by every task and every input, so inference is a single forward pass.
* :class:`PromptPool` -- the L2P-style baseline (Wang et al., "Learning to Prompt for Continual
  Learning", arXiv:2112.08654; prefix-tuned as in L2P++ of CODA-Prompt): a pool of prompts with
  learnable keys; a query (the frozen model's class-token feature, an extra forward pass)
  picks the ``top_k`` prompts by cosine similarity, and the surrogate loss
  ``sum_i (1 - cos(q, k_{s_i}))`` pulls the chosen keys towards the query.
* :func:`synthesize_outliers` -- virtual outliers at the boundary of the feature distribution
  (NPOS, Tao et al. arXiv:2303.02966, as used by OVOR): the points whose k-th nearest
  neighbour (on L2-normalised features) is farthest are the boundary; Gaussian samples around
  them are candidates; the candidates farthest from the data (k-th NN distance) are kept.
* :func:`energy_margin_loss` -- OVOR's regulariser (its Eq. for L_OVOR): with the energy
  ``E(x) = -logsumexp_c f_c(x)`` over the current task's logits,
  ``lambda * [Huber(relu(E(x_id) - m_id)) + Huber(relu(m_ood - E(x_ood)))]``; defaults
  lambda 0.1, m_id -15, m_ood -3 (official ``configs/common.yaml``).

Prefixes follow the CODA-Prompt / official code layout: ``length`` key tokens and ``length``
value tokens are concatenated in front of a block's keys and values (after the projections);
queries and the token sequence keep their length. Nothing here knows about training loops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.nn.attention_vit import AttentionViT
from priorlab.validation import check_finite, check_number, check_tensor

Prefixes = dict[int, torch.Tensor]  # block index -> (batch, 2, length, dim): keys then values


def _check_layers(layers: Sequence[int], who: str) -> tuple[int, ...]:
    layers = tuple(layers)
    if not layers or any(not isinstance(i, int) or i < 0 for i in layers) or len(set(layers)) < len(layers):
        raise PriorlabError(f"{who}: layers must be distinct non-negative block indices, got {layers}")
    return layers


def _prefixed_block(block, x: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """One pre-norm block of :class:`AttentionViT` with optional prefix keys/values."""
    attn = block.attn
    h = block.norm1(x)
    b, n, d = h.shape
    q, k, v = attn.query(h), attn.key(h), attn.value(h)
    if prefix is not None:
        k = torch.cat([prefix[:, 0], k], dim=1)
        v = torch.cat([prefix[:, 1], v], dim=1)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], attn.heads, attn.head_dim).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-2, -1) / attn.head_dim ** 0.5, dim=-1)
    x = x + attn.out((weights @ split(v)).transpose(1, 2).reshape(b, n, d))
    return x + block.mlp(block.norm2(x))


def prompted_features(vit: AttentionViT, x: torch.Tensor, prefixes: Prefixes | None = None) -> torch.Tensor:
    """The class-token feature (after the final LayerNorm) of ``vit`` with prefixes inserted.

    ``prefixes[i]`` of shape (batch or 1, 2, length, dim) is prepended to block ``i``'s keys
    and values. With ``prefixes=None`` this equals ``vit.norm(...)[:, 0]`` of the plain model.
    """
    if not isinstance(vit, AttentionViT):
        raise PriorlabError(f"prompted_features: vit must be an AttentionViT, got {type(vit).__name__}")
    prefixes = prefixes or {}
    depth, dim = len(vit.blocks), vit.norm.normalized_shape[0]
    tokens = vit.patch_embed(vit.patches(x))
    tokens = torch.cat([vit.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + vit.pos_embed
    for i, prefix in prefixes.items():
        if not 0 <= i < depth:
            raise PriorlabError(f"prompted_features: prefix for block {i}, but the ViT has {depth} blocks")
        check_tensor(prefix, f"prefixes[{i}]", who="prompted_features", dtype="float",
                     shape=(None, 2, None, dim))
        if prefix.shape[0] not in (1, len(x)):
            raise PriorlabError(f"prompted_features: prefixes[{i}] has batch {prefix.shape[0]}, "
                                f"expected 1 or {len(x)}")
    for i, block in enumerate(vit.blocks):
        prefix = prefixes.get(i)
        if prefix is not None and prefix.shape[0] == 1:
            prefix = prefix.expand(len(x), -1, -1, -1)
        tokens = _prefixed_block(block, tokens, prefix)
    return vit.norm(tokens)[:, 0]


class SinglePrompt(nn.Module):
    """OVOR's OnePrompt: ``length`` prefix key and value tokens in each block of ``layers``.

    ``forward(batch_size)`` returns the prefixes (shared by every input) and a zero auxiliary
    loss; ``forward_passes`` = 1 (no query pass).
    """

    forward_passes = 1

    def __init__(self, dim: int, length: int, layers: Sequence[int]):
        super().__init__()
        who = "SinglePrompt"
        dim = check_number(dim, "dim", who=who, low=1, integer=True)
        length = check_number(length, "length", who=who, low=1, integer=True)
        self.layers = _check_layers(layers, who)
        self.prompt = nn.Parameter(torch.empty(len(self.layers), 2, length, dim))
        nn.init.uniform_(self.prompt)  # the official code's (CODA-P's) prompt initialisation

    def forward(self, query: torch.Tensor | None = None) -> tuple[Prefixes, torch.Tensor]:
        return ({layer: self.prompt[j:j + 1] for j, layer in enumerate(self.layers)},
                self.prompt.new_zeros(()))


class PromptPool(nn.Module):
    """L2P-style pool of ``pool_size`` prompts with keys; ``top_k`` chosen per input.

    ``forward(query)`` with ``query`` (batch, dim) returns per-input prefixes of length
    ``top_k * length`` and the key-matching surrogate loss ``mean_b sum_i (1 - cos(q_b, k_i))``
    over the chosen keys. ``forward_passes`` = 2: the query needs a forward pass of its own.
    """

    forward_passes = 2

    def __init__(self, dim: int, pool_size: int, length: int, top_k: int, layers: Sequence[int]):
        super().__init__()
        who = "PromptPool"
        self.dim = check_number(dim, "dim", who=who, low=1, integer=True)
        pool_size = check_number(pool_size, "pool_size", who=who, low=1, integer=True)
        length = check_number(length, "length", who=who, low=1, integer=True)
        self.top_k = check_number(top_k, "top_k", who=who, low=1, high=pool_size, integer=True)
        self.layers = _check_layers(layers, who)
        self.prompts = nn.Parameter(torch.empty(pool_size, len(self.layers), 2, length, dim))
        self.keys = nn.Parameter(torch.empty(pool_size, dim))
        nn.init.uniform_(self.prompts)
        nn.init.uniform_(self.keys)

    def forward(self, query: torch.Tensor) -> tuple[Prefixes, torch.Tensor]:
        check_tensor(query, "query", who="PromptPool", dtype="float", shape=(None, self.dim))
        similarity = F.normalize(query, dim=1) @ F.normalize(self.keys, dim=1).T
        chosen_similarity, chosen = similarity.topk(self.top_k, dim=1)
        match_loss = (1.0 - chosen_similarity).sum(dim=1).mean()
        picked = self.prompts[chosen]  # (batch, top_k, layers, 2, length, dim)
        b, k, _, _, length, dim = picked.shape
        prefixes = {layer: picked[:, :, j].permute(0, 2, 1, 3, 4).reshape(b, 2, k * length, dim)
                    for j, layer in enumerate(self.layers)}
        return prefixes, match_loss


class PromptedViT(nn.Module):
    """A frozen :class:`AttentionViT` + a prompt module + a linear head on the class token.

    ``features(x)`` -> (feature, auxiliary loss); ``forward(x)`` -> logits. For a
    :class:`PromptPool` the query is the frozen, unprompted class-token feature (computed
    without gradients, an extra forward pass). Only the prompt and the head train.
    """

    def __init__(self, vit: AttentionViT, prompt: SinglePrompt | PromptPool, num_classes: int):
        super().__init__()
        if not isinstance(prompt, (SinglePrompt, PromptPool)):
            raise PriorlabError(f"PromptedViT: prompt must be a SinglePrompt or PromptPool, got "
                                f"{type(prompt).__name__}")
        if not isinstance(vit, AttentionViT):
            raise PriorlabError(f"PromptedViT: vit must be an AttentionViT, got {type(vit).__name__}")
        depth = len(vit.blocks)
        if any(layer >= depth for layer in prompt.layers):
            raise PriorlabError(f"PromptedViT: prompt layers {prompt.layers} do not fit a ViT "
                                f"with {depth} blocks")
        num_classes = check_number(num_classes, "num_classes", who="PromptedViT", low=2, integer=True)
        self.vit, self.prompt = vit, prompt
        for p in self.vit.parameters():
            p.requires_grad_(False)
        self.head = nn.Linear(vit.norm.normalized_shape[0], num_classes)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query = None
        if isinstance(self.prompt, PromptPool):
            with torch.no_grad():
                query = prompted_features(self.vit, x)
        prefixes, aux = self.prompt(query)
        return prompted_features(self.vit, x, prefixes), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[0])

    def prompt_parameters(self) -> int:
        return sum(p.numel() for p in self.prompt.parameters())


def _kth_distance(points: torch.Tensor, reference: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each row of ``points`` to its k-th nearest row of ``reference``."""
    out = [torch.cdist(points[i:i + chunk], reference).kthvalue(k, dim=1).values
           for i in range(0, len(points), chunk)]
    return torch.cat(out)


def synthesize_outliers(features: torch.Tensor, n_outliers: int, *, k: int = 50,
                        n_boundary: int = 50, samples_per_point: int = 600, sigma: float = 0.1,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """NPOS-style virtual outliers around the boundary of ``features`` (n, dim).

    Boundary: the ``n_boundary`` points with the largest distance to their ``k``-th nearest
    neighbour among the L2-normalised features (the point itself counts as its first).
    Candidates: ``samples_per_point`` draws ``x_b + sigma * N(0, I)`` around each. Kept: the
    ``n_outliers`` candidates whose (normalised) k-th NN distance to the data is largest.
    Official defaults: k 50, 50 boundary points, 600 draws each, sigma 0.1 (``cov``),
    40 outliers per class. Returns (n_outliers, dim), no gradient.
    """
    who = "synthesize_outliers"
    check_tensor(features, "features", who=who, dtype="float", shape=(None, None))
    check_finite(features, "features", who=who)
    n = len(features)
    k = check_number(k, "k", who=who, low=1, high=n, integer=True,
                     hint="k must not exceed the number of feature vectors")
    n_boundary = check_number(n_boundary, "n_boundary", who=who, low=1, integer=True)
    samples_per_point = check_number(samples_per_point, "samples_per_point", who=who, low=1, integer=True)
    sigma = check_number(sigma, "sigma", who=who, low=0, low_open=True)
    n_outliers = check_number(n_outliers, "n_outliers", who=who, low=1, integer=True)
    n_boundary = min(n_boundary, n)
    if n_outliers > n_boundary * samples_per_point:
        raise PriorlabError(f"{who}: n_outliers ({n_outliers}) exceeds the {n_boundary * samples_per_point} "
                            f"candidates (n_boundary x samples_per_point)")
    with torch.no_grad():
        features = features.detach()
        normed = F.normalize(features, dim=1)
        boundary = _kth_distance(normed, normed, k).topk(n_boundary).indices
        noise = torch.randn(n_boundary * samples_per_point, features.shape[1],
                            generator=generator, dtype=features.dtype)
        candidates = features[boundary].repeat_interleave(samples_per_point, dim=0) + sigma * noise
        farthest = _kth_distance(F.normalize(candidates, dim=1), normed, k).topk(n_outliers).indices
        return candidates[farthest]


def energy(logits: torch.Tensor) -> torch.Tensor:
    """Free energy ``-logsumexp`` over the last dimension (low = confident, in-distribution)."""
    return -torch.logsumexp(logits, dim=-1)


def energy_margin_loss(id_logits: torch.Tensor, ood_logits: torch.Tensor, *, weight: float = 0.1,
                       id_margin: float = -15.0, ood_margin: float = -3.0) -> torch.Tensor:
    """OVOR's regulariser: ``weight * [Huber(relu(E_id - m_id)) + Huber(relu(m_ood - E_ood))]``.

    Huber with delta 1, averaged over each batch (``torch.nn.HuberLoss`` against zero, as the
    official ``NPOS.loss``). Logits are the current task's classes only. Zero when every
    in-distribution energy is below ``id_margin`` and every outlier's above ``ood_margin``.
    """
    who = "energy_margin_loss"
    check_tensor(id_logits, "id_logits", who=who, dtype="float", shape=(None, None), non_empty=True,
                 finite=True)
    check_tensor(ood_logits, "ood_logits", who=who, dtype="float", shape=(None, id_logits.shape[1]),
                 non_empty=True, finite=True)
    weight = check_number(weight, "weight", who=who, low=0)
    id_margin = check_number(id_margin, "id_margin", who=who)
    ood_margin = check_number(ood_margin, "ood_margin", who=who)
    if id_margin > ood_margin:
        raise PriorlabError(f"{who}: id_margin ({id_margin}) must not exceed ood_margin ({ood_margin}): "
                            "in-distribution energies are pushed below id_margin, outliers above ood_margin")
    id_gap = F.relu(energy(id_logits) - id_margin)
    ood_gap = F.relu(ood_margin - energy(ood_logits))
    return weight * (F.huber_loss(id_gap, torch.zeros_like(id_gap))
                     + F.huber_loss(ood_gap, torch.zeros_like(ood_gap)))
