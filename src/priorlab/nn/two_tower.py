"""Two-tower retrieval model over categorical features, trained with an in-batch softmax.

As in Yao et al., "Self-supervised Learning for Large-scale Item Recommendations" (arXiv:2007.12865,
section 2): a query tower and an item tower map their features to embeddings; the score is the
cosine similarity over a temperature, and the main loss is a softmax over the batch's items
(every other item of the batch is a negative), with the logQ sampling-bias correction of Yi et al.
(RecSys 2019), which the paper's retrieval models use: each item's logit is lowered by the log of
its probability of being in a batch, so popular items are not over-penalised as negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.rrcm import info_nce
from priorlab.validation import check_number, check_tensor


class FeatureTower(nn.Module):
    """Embeds each categorical feature (mean over its tokens; token 0 is padding, so a masked or
    missing feature contributes a zero vector), concatenates them and applies an MLP."""

    def __init__(self, vocab_sizes: Sequence[int], embed_dim: int = 32, hidden: int = 128,
                 out_dim: int = 64):
        super().__init__()
        if not vocab_sizes or any(int(v) < 2 for v in vocab_sizes):
            raise PriorlabError(f"FeatureTower: vocab_sizes must be non-empty, each >= 2 (padding + "
                                f"one value), got {list(vocab_sizes)}")
        for name, value in (("embed_dim", embed_dim), ("hidden", hidden), ("out_dim", out_dim)):
            check_number(value, name, who="FeatureTower", low=1, integer=True)
        self.embeddings = nn.ModuleList(nn.EmbeddingBag(int(v), embed_dim, mode="mean", padding_idx=0)
                                        for v in vocab_sizes)
        self.mlp = nn.Sequential(nn.Linear(len(vocab_sizes) * embed_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.embeddings):
            raise PriorlabError(f"FeatureTower: expected {len(self.embeddings)} features, got "
                                f"{len(features)}")
        for f, (emb, tokens) in enumerate(zip(self.embeddings, features)):
            check_tensor(tokens, f"features[{f}]", who="FeatureTower", ndim=2, dtype="integer",
                         hint="one row of token ids per example (0 = padding)")
            if tokens.shape[1] == 0:
                raise PriorlabError(f"FeatureTower: features[{f}] has no token column; pad an "
                                    "absent feature with token 0")
            if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < emb.num_embeddings:
                raise PriorlabError(f"FeatureTower: features[{f}] holds token ids outside "
                                    f"[0, {emb.num_embeddings}) (its vocabulary size), got "
                                    f"{int(tokens.min())}..{int(tokens.max())}")
        return self.mlp(torch.cat([emb(f) for emb, f in zip(self.embeddings, features)], dim=1))


class TwoTower(nn.Module):
    """Query tower + item tower; ``loss`` is the in-batch softmax of the paper's main task."""

    def __init__(self, query_vocab: Sequence[int], item_vocab: Sequence[int], embed_dim: int = 32,
                 hidden: int = 128, out_dim: int = 64):
        super().__init__()
        self.query_tower = FeatureTower(query_vocab, embed_dim, hidden, out_dim)
        self.item_tower = FeatureTower(item_vocab, embed_dim, hidden, out_dim)

    def loss(self, query_features: Sequence[torch.Tensor], item_features: Sequence[torch.Tensor],
             tau: float = 0.1, log_q: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the batch of -log softmax_j(cos(q_i, x_j) / tau - log_q_j)[i]: pair i's item
        is the positive, the batch's other items the negatives. ``log_q`` (batch,): log sampling
        probability of each pair's item (logQ correction); None = no correction."""
        if log_q is None:
            return info_nce(self.query_tower(query_features), self.item_tower(item_features), tau=tau).mean()
        tau = check_number(tau, "tau", who="TwoTower.loss", low=0, low_open=True)
        log_q = check_tensor(log_q, "log_q", who="TwoTower.loss", ndim=1, dtype="float", finite=True)
        q = nn.functional.normalize(self.query_tower(query_features), dim=1)
        x = nn.functional.normalize(self.item_tower(item_features), dim=1)
        if log_q.shape[0] != x.shape[0]:
            raise PriorlabError(f"TwoTower.loss: log_q needs one entry per item ({x.shape[0]}), got "
                                f"{log_q.shape[0]}")
        logits = q @ x.T / tau - log_q[None, :]
        return nn.functional.cross_entropy(logits, torch.arange(len(logits)))

    @torch.no_grad()
    def scores(self, query_features: Sequence[torch.Tensor],
               item_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(n_queries, n_items) cosine similarities, for retrieval."""
        q = nn.functional.normalize(self.query_tower(query_features), dim=1)
        x = nn.functional.normalize(self.item_tower(item_features), dim=1)
        return q @ x.T
