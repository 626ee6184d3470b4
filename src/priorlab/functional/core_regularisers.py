"""CoRe: context regularisers for text-embedding (textual-inversion) learning.

Wu, Pang, Zhang, Pang, Yin, Zhao, Li and Mao, "CoRe: Context-Regularized Text Embedding Learning
for Text-to-Image Personalization", AAAI 2025, arXiv:2408.15914. A regularisation prompt ``y*``
holding the learnt token S* ("a S* in the jungle") is paired with the reference prompt ``y_cat``
in which S* is replaced by its super-category word ("a dog in the jungle"). Only the *context*
tokens i != k (k the position of S*) are constrained, never S* itself:

- context embedding regularisation (Eq. 3): the text encoder's output states of the context
  tokens stay aligned, ``L_emb = 1/(n-1) sum_{i != k} (1 - cos(E(v_i), E(v'_i)))``;
- context attention regularisation (Eq. 4): the mean cross-attention each context token receives,
  averaged over all cross-attention layers of the UNet (16 in SD), heads and pixels, stays the
  same, ``L_attn = 1/(n-1) sum_{i != k} (mu(M_i) - mu(M'_i))^2``;
- the objective is ``L_diffusion + lam_emb L_emb + lam_attn L_attn`` (Eq. 5; official weights
  lam_emb = 1.5e-4, lam_attn = 0.05), optimising only the input embedding of S*;
- embedding rescaling (Eq. 6): during the middle of training (steps 120-180 of 300) the updated
  embedding is rescaled to the norm it had before the step, ``v_s <- v_s / |v_s| * |v_{s-1}|``.

The cross-attention maps come from :func:`capture_cross_attention`, which swaps the processor
of every cross-attention module of a diffusers UNet (any :class:`diffusers.UNet2DConditionModel`)
for one that computes the attention explicitly and records its probabilities, differentiably.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_tensor

OFFICIAL_EMBEDDING_WEIGHT = 1.5e-4  # lam_emb, official script (--embedding_cosine_weight)
OFFICIAL_ATTENTION_WEIGHT = 0.05  # lam_attn, official script (--attention_mean_weight)


def _check_mask(context_mask: torch.Tensor, shape: tuple[int, int], who: str) -> torch.Tensor:
    check_tensor(context_mask, "context_mask", who=who, shape=shape, dtype="bool")
    if not bool(context_mask.any(dim=1).all()):
        raise PriorlabError(f"{who}: every prompt needs at least one context token in context_mask")
    return context_mask


def _masked_mean_per_prompt(values: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
    """Mean over each prompt's context tokens (the 1/(n-1) sum), then over prompts."""
    mask = context_mask.to(values.dtype)
    return ((values * mask).sum(dim=1) / mask.sum(dim=1)).mean()


def context_embedding_loss(states: torch.Tensor, reference_states: torch.Tensor,
                           context_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3: mean over context tokens of ``1 - cos(E(v_i), E(v'_i))``, averaged over prompts.

    Args:
        states: (N, L, D) text-encoder output states of the prompts with S* (differentiable
            w.r.t. the learnt embedding).
        reference_states: (N, L, D) states of the same prompts with the super-category word at
            S*'s position (positions aligned token by token).
        context_mask: (N, L) bool, True at the context tokens to regularise (not S*, not padding).
    """
    who = "context_embedding_loss"
    check_tensor(states, "states", who=who, ndim=3, dtype="float", non_empty=True, finite=True)
    check_tensor(reference_states, "reference_states", who=who, shape=tuple(states.shape), dtype="float",
                 finite=True)
    _check_mask(context_mask, tuple(states.shape[:2]), who)
    distance = 1 - F.cosine_similarity(states, reference_states, dim=-1)  # (N, L)
    return _masked_mean_per_prompt(distance, context_mask)


def attention_token_means(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """``mu(M_i^{1:L})`` of Eq. 4: the attention each text token receives, averaged over every
    layer's heads and pixels, then over layers (each layer weighs the same, whatever its size).

    ``maps``: per cross-attention layer, probabilities (N, heads, pixels, tokens) as recorded by
    :func:`capture_cross_attention`. Returns (N, tokens).
    """
    who = "attention_token_means"
    if isinstance(maps, torch.Tensor) or not maps:
        raise PriorlabError(f"{who}: maps must be a non-empty list of (N, heads, pixels, tokens) "
                            f"tensors (one per cross-attention layer); got {type(maps).__name__}")
    first = check_tensor(maps[0], "maps[0]", who=who, ndim=4, dtype="float", non_empty=True)
    n, tokens = first.shape[0], first.shape[-1]
    for i, m in enumerate(maps):
        check_tensor(m, f"maps[{i}]", who=who, shape=(n, None, None, tokens), dtype="float", finite=True)
    return torch.stack([m.mean(dim=(1, 2)) for m in maps]).mean(dim=0)


def context_attention_loss(maps: Sequence[torch.Tensor], reference_maps: Sequence[torch.Tensor],
                           context_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 4: mean over context tokens of ``(mu(M_i) - mu(M'_i))^2``, averaged over prompts.

    ``maps`` / ``reference_maps``: the cross-attention probabilities of the same UNet call
    (same noisy images and timesteps) conditioned on the S* prompts and on the reference
    prompts; ``context_mask`` as in :func:`context_embedding_loss`.
    """
    who = "context_attention_loss"
    means, reference = attention_token_means(maps), attention_token_means(reference_maps)
    if means.shape != reference.shape:
        raise PriorlabError(f"{who}: maps give {tuple(means.shape)} token means but reference_maps "
                            f"give {tuple(reference.shape)}; record both with the same UNet and shapes")
    _check_mask(context_mask, tuple(means.shape), who)
    return _masked_mean_per_prompt((means - reference) ** 2, context_mask)


def rescale_embedding(embedding: torch.Tensor, norm: float | torch.Tensor) -> None:
    """Eq. 6, in place: ``v <- v / |v| * norm`` (norm = |v| before the last optimiser step),
    along the last dimension. Call it right after ``optimizer.step()`` in the rescaling window."""
    who = "rescale_embedding"
    check_tensor(embedding, "embedding", who=who, min_ndim=1, dtype="float", non_empty=True, finite=True)
    norm = torch.as_tensor(norm, dtype=embedding.dtype)
    if not bool(torch.isfinite(norm).all()) or bool((norm <= 0).any()):
        raise PriorlabError(f"{who}: norm must be positive and finite, got {norm}")
    with torch.no_grad():
        embedding.mul_(norm / embedding.norm(dim=-1, keepdim=True).clamp_min(1e-12))


class AttentionRecorder:
    """A diffusers attention processor that computes attention explicitly (as diffusers'
    ``AttnProcessor``: softmax(QK^T * scale) V) and appends the probabilities, reshaped to
    (N, heads, pixels, tokens) and still in the autograd graph, to ``store``."""

    def __init__(self, store: list):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        residual = hidden_states
        if getattr(attn, "spatial_norm", None) is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_like = hidden_states.ndim == 4
        if image_like:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, tokens = context.shape[0], context.shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (N * heads, pixels, tokens)
        self.store.append(probs.view(batch, attn.heads, probs.shape[1], probs.shape[2]))
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, value))))
        if image_like:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_modules(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every diffusers cross-attention module (``is_cross_attention``) —
    the ``attn2`` of each transformer block: 16 in SD 1.x/2.x, 4 in the tiny digits UNet."""
    found = [(name, m) for name, m in unet.named_modules()
             if getattr(m, "is_cross_attention", False) and hasattr(m, "set_processor")]
    if not found:
        raise PriorlabError(f"capture_cross_attention: {type(unet).__name__} has no diffusers "
                            "cross-attention modules (is_cross_attention); pass a "
                            "UNet2DConditionModel (e.g. pipe.unet)")
    return found


@contextmanager
def capture_cross_attention(unet: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every UNet forward appends one (N, heads, pixels, tokens) probability
    tensor per cross-attention layer to the yielded list (clear it between calls); the original
    processors are restored on exit, even after an error."""
    modules = cross_attention_modules(unet)
    originals = [m.processor for _, m in modules]
    store: list[torch.Tensor] = []
    recorder = AttentionRecorder(store)
    try:
        for _, m in modules:
            m.set_processor(recorder)
        yield store
    finally:
        for (_, m), processor in zip(modules, originals):
            m.set_processor(processor)


def core_losses(unet: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor,
                reference_states: torch.Tensor, context_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both CoRe terms for one batch: ``{"embedding": L_emb, "attention": L_attn}``.

    The UNet denoises the same ``noisy`` inputs at the same ``timesteps`` twice, once under the
    S* prompts' ``states`` and once under the ``reference_states`` (no gradient: the reference
    is a fixed target), while :func:`capture_cross_attention` records every cross-attention map.
    Works with any text encoder's per-token states, e.g. SD's CLIP states (N, 77, 768) and
    ``pipe.unet``. Combine as ``lam_emb * L_emb + lam_attn * L_attn`` (Eq. 5).
    """
    who = "core_losses"
    check_tensor(noisy, "noisy", who=who, ndim=4, dtype="float", non_empty=True, finite=True)
    check_tensor(states, "states", who=who, shape=(len(noisy), None, None), dtype="float")
    embedding = context_embedding_loss(states, reference_states, context_mask)
    with capture_cross_attention(unet) as maps:
        unet(noisy, timesteps, encoder_hidden_states=states)
        concept_maps = list(maps)
        maps.clear()
        with torch.no_grad():
            unet(noisy, timesteps, encoder_hidden_states=reference_states)
        reference_maps = list(maps)
    return {"embedding": embedding,
            "attention": context_attention_loss(concept_maps, reference_maps, context_mask)}
