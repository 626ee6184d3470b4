"""Insertion Language Models (ILM): Patel et al., "Insertion Language Models: Sequence Generation
with Arbitrary-Position Insertions", arXiv 2505.05755 (official code: dhruvdcoder/ILM).

An ILM generates by inserting one token at a time anywhere in the current sequence. The network
reads the partial sequence bidirectionally; the output at position i scores "insert token v into
the gap right after position i", and one softmax runs jointly over all (gap, token) pairs. A
stop classifier on the first (CLS) position says whether the sequence is complete.

Training (the paper's denoising objective): drop a random subset of the target's tokens, keep
the rest in order, and fit the joint (gap, token) distribution to the dropped tokens — each
dropped token is a correct next insertion, so the target distribution puts mass
count(gap, token) / n_dropped on every pair — plus a binary cross-entropy for "nothing was
dropped" on the stop classifier. Decoding: while the stop classifier says "go on", insert the
most likely (gap, token) pair.

Also here: :class:`SequenceTransformer`, the small pre-norm transformer shared by the ILM and
the baselines it is compared with (causal for an autoregressive model, bidirectional otherwise).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


class SequenceTransformer(nn.Module):
    """Token + learned position embeddings, ``depth`` pre-norm encoder layers, a final norm and a
    linear head over the vocabulary. ``causal=True`` masks attention to earlier positions.
    Positions holding ``pad_id`` are ignored as keys."""

    def __init__(self, vocab_size: int, max_len: int, *, pad_id: int, dim: int = 64, depth: int = 3,
                 heads: int = 4, causal: bool = False):
        super().__init__()
        vocab_size = check_number(vocab_size, "vocab_size", who="SequenceTransformer", low=2, integer=True)
        max_len = check_number(max_len, "max_len", who="SequenceTransformer", low=1, integer=True)
        dim = check_number(dim, "dim", who="SequenceTransformer", low=1, integer=True)
        depth = check_number(depth, "depth", who="SequenceTransformer", low=1, integer=True)
        heads = check_number(heads, "heads", who="SequenceTransformer", low=1, integer=True)
        pad_id = check_number(pad_id, "pad_id", who="SequenceTransformer", low=0, high=vocab_size - 1,
                              integer=True)
        if dim % heads:
            raise PriorlabError(f"SequenceTransformer: dim={dim} must be divisible by heads={heads}")
        self.vocab_size, self.max_len, self.pad_id, self.causal = vocab_size, max_len, pad_id, bool(causal)
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, length) token ids -> (batch, length, dim) final-norm features."""
        tokens = check_tensor(tokens, "tokens", who="SequenceTransformer", ndim=2, dtype="integer",
                              non_empty=True)
        length = tokens.shape[1]
        if length > self.max_len:
            raise PriorlabError(f"SequenceTransformer: sequence length {length} exceeds "
                                f"max_len={self.max_len}")
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise PriorlabError(f"SequenceTransformer: token ids must lie in [0, {self.vocab_size}), got "
                                f"[{int(tokens.min())}, {int(tokens.max())}]")
        x = self.token_embedding(tokens) + self.position_embedding.weight[:length]
        mask = (nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
                if self.causal else None)
        padding = tokens == self.pad_id
        # A causal model reads left-aligned prompts, so its padding only ever follows real tokens.
        x = self.encoder(x, mask=mask, src_key_padding_mask=padding if padding.any() else None,
                         is_causal=self.causal)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(tokens))


class InsertionLM(nn.Module):
    """A bidirectional :class:`SequenceTransformer` whose vocabulary head scores insertions
    (position i, token v = insert v right after position i) plus a stop classifier read from
    position 0 (the CLS token). ``forward(tokens) -> (insert_logits (B, T, V), stop_logits (B,))``."""

    def __init__(self, backbone: SequenceTransformer):
        super().__init__()
        if not isinstance(backbone, SequenceTransformer):
            raise PriorlabError("InsertionLM: backbone must be a SequenceTransformer, got "
                                f"{type(backbone).__name__}")
        if backbone.causal:
            raise PriorlabError("InsertionLM: the backbone must be bidirectional (causal=False); an "
                                "insertion anywhere needs context on both sides of each gap")
        self.backbone = backbone
        self.stop_head = nn.Linear(backbone.head.in_features, 1)

    @property
    def pad_id(self) -> int:
        return self.backbone.pad_id

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone.hidden(tokens)
        return self.backbone.head(h), self.stop_head(h[:, 0]).squeeze(-1)


class InsertionTargets(NamedTuple):
    """What :func:`insertion_loss` fits: per-(gap, token) counts of dropped tokens (B, T, V), the
    number dropped (B,), and which gaps may receive insertions (B, T)."""

    counts: torch.Tensor
    n_dropped: torch.Tensor
    gap_mask: torch.Tensor


def drop_tokens(prompt: torch.Tensor, target: torch.Tensor, *, pad_id: int, vocab_size: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, InsertionTargets]:
    """Corrupt ``target`` (B, L) for ILM training: per example draw n ~ Uniform{0, ..., L}, drop a
    uniformly random n-subset of the target tokens and keep the rest in order after ``prompt``
    (B, P). Returns the (B, P + L) left-aligned, PAD-filled input and its :class:`InsertionTargets`.
    The prompt is never dropped; insertions may go after its last token or after any kept target
    token (a dropped token's gap is the last kept token before it)."""
    prompt = check_tensor(prompt, "prompt", who="drop_tokens", ndim=2, dtype="integer", non_empty=True)
    target = check_tensor(target, "target", who="drop_tokens", ndim=2, dtype="integer", non_empty=True)
    if prompt.shape[0] != target.shape[0]:
        raise PriorlabError(f"drop_tokens: prompt and target need the same batch size, got "
                            f"{prompt.shape[0]} and {target.shape[0]}")
    batch, p_len = prompt.shape
    t_len = target.shape[1]
    n_drop = torch.randint(0, t_len + 1, (batch,), generator=generator)
    rank = torch.rand(batch, t_len, generator=generator).argsort(dim=1).argsort(dim=1)
    dropped = rank < n_drop[:, None]
    kept = ~dropped
    kept_before = kept.long().cumsum(dim=1) - kept.long()  # kept tokens strictly before each one
    tokens = torch.full((batch, p_len + t_len + 1), pad_id, dtype=torch.long)
    tokens[:, :p_len] = prompt
    # kept token j goes to slot P + kept_before[j]; dropped ones go to a scratch column, cut below
    slots = torch.where(kept, p_len + kept_before, torch.full_like(kept_before, p_len + t_len))
    tokens.scatter_(1, slots, target.long())
    tokens = tokens[:, :-1]
    gaps = p_len - 1 + kept_before
    counts = torch.zeros(batch, (p_len + t_len) * vocab_size)
    flat = gaps * vocab_size + target.long()
    counts.scatter_add_(1, flat, dropped.float())
    gap_mask = torch.zeros(batch, p_len + t_len, dtype=torch.bool)
    gap_mask[:, p_len - 1:] = True
    gap_mask &= tokens != pad_id
    return tokens, InsertionTargets(counts.view(batch, p_len + t_len, vocab_size), n_drop, gap_mask)


def _joint_log_probs(insert_logits: torch.Tensor, gap_mask: torch.Tensor,
                     token_mask: torch.Tensor | None) -> torch.Tensor:
    allowed = gap_mask[:, :, None]
    if token_mask is not None:
        allowed = allowed & token_mask.to(insert_logits.device)[None, None, :]
    logits = insert_logits.masked_fill(~allowed, torch.finfo(insert_logits.dtype).min)
    batch = logits.shape[0]
    return logits.reshape(batch, -1).log_softmax(dim=-1).view_as(logits)


def insertion_loss(outputs: tuple[torch.Tensor, torch.Tensor], targets: InsertionTargets, *,
                   token_mask: torch.Tensor | None = None, stop_weight: float = 1.0) -> torch.Tensor:
    """The ILM objective: mean over the batch of the cross-entropy between the joint softmax over
    allowed (gap, token) pairs and the dropped-token distribution counts / n_dropped (zero for
    examples with nothing dropped), plus ``stop_weight`` x the binary cross-entropy of the stop
    classifier against "nothing was dropped". ``token_mask`` (V,) bool limits the insertable
    tokens (e.g. no special tokens)."""
    if not (isinstance(outputs, tuple) and len(outputs) == 2):
        raise PriorlabError("insertion_loss: outputs must be InsertionLM's (insert_logits, stop_logits)")
    insert_logits, stop_logits = outputs
    counts, n_dropped, gap_mask = targets
    check_tensor(insert_logits, "insert_logits", who="insertion_loss", ndim=3, dtype="float",
                 finite=True, non_empty=True)
    batch = insert_logits.shape[0]
    check_tensor(stop_logits, "stop_logits", who="insertion_loss", shape=(batch,), dtype="float",
                 finite=True)
    check_tensor(counts, "counts", who="insertion_loss", shape=tuple(insert_logits.shape),
                 dtype=("float", "integer"), finite=True)
    check_tensor(n_dropped, "n_dropped", who="insertion_loss", shape=(batch,), dtype="integer")
    if bool((n_dropped < 0).any()) or bool((counts < 0).any()):
        raise PriorlabError("insertion_loss: counts and n_dropped must be >= 0 (numbers of dropped tokens)")
    check_tensor(gap_mask, "gap_mask", who="insertion_loss", shape=tuple(insert_logits.shape[:2]),
                 dtype="bool")
    stop_weight = check_number(stop_weight, "stop_weight", who="insertion_loss", low=0)
    if token_mask is not None:
        check_tensor(token_mask, "token_mask", who="insertion_loss", shape=(insert_logits.shape[2],),
                     dtype="bool")
    if (counts.sum(dim=(1, 2)) != n_dropped.to(counts.dtype)).any():
        raise PriorlabError("insertion_loss: counts must sum to n_dropped for every example")
    log_probs = _joint_log_probs(insert_logits, gap_mask, token_mask)
    weights = counts / n_dropped.clamp(min=1).to(counts.dtype)[:, None, None]
    # masked pairs carry zero weight; clamp keeps 0 * (very negative) finite
    token_loss = -(weights * log_probs.clamp(min=-1e4)).sum(dim=(1, 2))
    stop_loss = F.binary_cross_entropy_with_logits(stop_logits, (n_dropped == 0).to(stop_logits.dtype))
    return token_loss.mean() + stop_weight * stop_loss


@torch.no_grad()
def insertion_decode(model: InsertionLM, prompt: torch.Tensor, max_new: int, *,
                     token_mask: torch.Tensor | None = None, stop_threshold: float = 0.5) -> torch.Tensor:
    """Greedy ILM decoding: repeatedly, for the sequences not yet stopped, stop when the stop
    classifier's probability exceeds ``stop_threshold``, else insert the argmax (gap, token) pair
    (gaps: after the prompt's last token or after any generated token). At most ``max_new``
    insertions. Returns the (B, max_new) generated tokens, PAD after each sequence's end."""
    if not isinstance(model, InsertionLM):
        raise PriorlabError(f"insertion_decode: model must be an InsertionLM, got {type(model).__name__}")
    prompt = check_tensor(prompt, "prompt", who="insertion_decode", ndim=2, dtype="integer", non_empty=True)
    max_new = check_number(max_new, "max_new", who="insertion_decode", low=1, integer=True)
    stop_threshold = check_number(stop_threshold, "stop_threshold", who="insertion_decode", low=0, high=1)
    batch, p_len = prompt.shape
    pad = model.pad_id
    tokens = torch.full((batch, p_len + max_new), pad, dtype=torch.long, device=prompt.device)
    tokens[:, :p_len] = prompt
    lengths = torch.full((batch,), p_len, dtype=torch.long, device=prompt.device)
    done = torch.zeros(batch, dtype=torch.bool, device=prompt.device)
    positions = torch.arange(p_len + max_new, device=prompt.device)
    was_training = model.training
    model.eval()
    for _ in range(max_new):
        insert_logits, stop_logits = model(tokens)
        done |= torch.sigmoid(stop_logits) > stop_threshold
        if done.all():
            break
        gap_mask = (positions[None, :] >= p_len - 1) & (positions[None, :] < lengths[:, None])
        best = _joint_log_probs(insert_logits, gap_mask, token_mask).reshape(batch, -1).argmax(dim=1)
        gap, token = best // insert_logits.shape[2], best % insert_logits.shape[2]
        shifted = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)
        after = positions[None, :] > gap[:, None] + 1
        inserted = torch.where(after, shifted, tokens)
        inserted[torch.arange(batch), gap + 1] = token
        active = ~done
        tokens[active] = inserted[active]
        lengths += active.long()
    model.train(was_training)
    return tokens[:, p_len:]
