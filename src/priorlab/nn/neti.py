"""NeTI: a neural space-time representation for textual inversion (paper 48).

Alaluf, Richardson, Metzer, Cohen-Or, "A Neural Space-Time Representation for Text-to-Image
Personalization", SIGGRAPH Asia 2023, arXiv 2305.15391. Official code:
NeuralTextualInversion/NeTI.

Plain textual inversion learns one input embedding for the placeholder word. NeTI learns a small
mapper M(t, l) that gives the placeholder a different input embedding for every denoising
timestep t and every cross-attention layer l of the U-Net (the "space-time" conditioning
space P*):

- the input (t, l) goes through random Fourier features, v = [sin(W x), cos(W x)] / ||.||
  with W ~ N(0, diag(sigma_t^2, sigma_l^2)) (sigma_t 0.03, sigma_l 2, 1024 frequencies), then a
  linear layer initialised to the encodings of anchor points (10 timesteps x every layer), so
  its outputs start as similarities to the anchors (paper sec. 4.2);
- two hidden layers (128 units, LayerNorm, LeakyReLU), with nested dropout on the last hidden
  vector during training (zero every unit from a random index on, probability 0.5), which orders
  the units by importance so truncating at inference trades reconstruction for editability;
- a linear output normalised to the norm of the super-category word's embedding;
- optionally a second output, the textual bypass: a residual added to the text encoder's
  output state of the placeholder, h + 0.2 ||h|| b / ||b||, used for the cross-attention values
  only (the keys still see h).

:class:`NeTIMapper` is the mapper; :func:`neti_conditioning` turns it into per-layer (key, value)
text states through any text encoder given as a callable; :func:`install_neti_processors` makes
every cross-attention layer of a diffusers ``UNet2DConditionModel`` (any size) read its own
states, passed as ``unet(..., cross_attention_kwargs={"neti_states": conditioning})``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor

NETI_KWARG = "neti_states"  # the cross_attention_kwargs key the processors read
BYPASS_SCALE = 0.2  # the official code's weight of the textual bypass


class NeTIMapper(nn.Module):
    """M(t, l) -> (token embedding, bypass or None), the official architecture and defaults.

    Args:
        embedding_dim: the text encoder's input-embedding size (768 for SD 1.x's CLIP).
        num_layers: how many cross-attention layers the U-Net has (16 for SD 1.x).
        norm_scale: output norm (the super-category word's embedding norm); None = unnormalised.
        num_timesteps: the diffusion's training timesteps (anchor grid spans [0, num_timesteps)).
        num_time_anchors, sigma_t, sigma_l, num_frequencies: the positional encoding.
        hidden_dim: width of the two hidden layers (and of the nested-dropout vector).
        nested_dropout_prob: probability of truncating a training sample's hidden vector.
        bypass: also output the textual-bypass residual.
        seed: draws the random Fourier frequencies (a buffer, saved in the state dict).
    """

    def __init__(self, embedding_dim: int, num_layers: int, *, norm_scale: float | None = None,
                 num_timesteps: int = 1000, num_time_anchors: int = 10, sigma_t: float = 0.03,
                 sigma_l: float = 2.0, num_frequencies: int = 1024, hidden_dim: int = 128,
                 nested_dropout_prob: float = 0.5, bypass: bool = True, seed: int = 0):
        super().__init__()
        who = "NeTIMapper"
        self.embedding_dim = check_number(embedding_dim, "embedding_dim", who=who, low=1, integer=True)
        self.num_layers = check_number(num_layers, "num_layers", who=who, low=1, integer=True)
        self.num_timesteps = check_number(num_timesteps, "num_timesteps", who=who, low=1, integer=True)
        num_time_anchors = check_number(num_time_anchors, "num_time_anchors", who=who, low=1,
                                        high=self.num_timesteps, integer=True)
        sigma_t = check_number(sigma_t, "sigma_t", who=who, low=0, low_open=True)
        sigma_l = check_number(sigma_l, "sigma_l", who=who, low=0, low_open=True)
        num_frequencies = check_number(num_frequencies, "num_frequencies", who=who, low=1, integer=True)
        self.hidden_dim = check_number(hidden_dim, "hidden_dim", who=who, low=1, integer=True)
        self.nested_dropout_prob = check_number(nested_dropout_prob, "nested_dropout_prob", who=who,
                                                low=0, high=1)
        self.norm_scale = None if norm_scale is None else check_number(
            norm_scale, "norm_scale", who=who, low=0, low_open=True)
        self.bypass = bool(bypass)
        generator = torch.Generator().manual_seed(int(seed))
        frequencies = torch.randn(num_frequencies, 2, generator=generator) * torch.tensor([sigma_t, sigma_l])
        self.register_buffer("frequencies", frequencies)
        # anchors: every (t, l) with t on a grid of num_time_anchors timesteps
        step = self.num_timesteps // num_time_anchors
        anchor_t = torch.arange(0, self.num_timesteps, step)[:num_time_anchors]
        anchors = torch.cartesian_prod(anchor_t.float(), torch.arange(self.num_layers).float())
        self.anchor_layer = nn.Linear(2 * num_frequencies, len(anchors))
        with torch.no_grad():
            self.anchor_layer.weight.copy_(self._fourier(anchors))
        self.hidden = nn.Sequential(
            nn.Linear(len(anchors), self.hidden_dim), nn.LayerNorm(self.hidden_dim), nn.LeakyReLU(),
            nn.Linear(self.hidden_dim, self.hidden_dim), nn.LayerNorm(self.hidden_dim), nn.LeakyReLU())
        self.output = nn.Linear(self.hidden_dim, self.embedding_dim * (2 if self.bypass else 1))

    def _fourier(self, points: torch.Tensor) -> torch.Tensor:
        angles = points @ self.frequencies.T
        return F.normalize(torch.cat([angles.sin(), angles.cos()], dim=-1), dim=-1)

    def encode(self, timesteps: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
        """Unit-norm Fourier features of (t, l) pairs: (B, 2 * num_frequencies)."""
        return self._fourier(torch.stack([timesteps.float(), layers.float()], dim=-1))

    def forward(self, timesteps: torch.Tensor, layers: torch.Tensor,
                truncation: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings (B, embedding_dim) and bypass residuals (B, embedding_dim) or None.

        ``timesteps`` (B,) in [0, num_timesteps), ``layers`` (B,) in [0, num_layers).
        ``truncation`` keeps only the first ``truncation`` hidden units (the nested-dropout
        control of the reconstruction-editability trade-off); without it, training mode
        applies nested dropout.
        """
        who = "NeTIMapper"
        check_tensor(timesteps, "timesteps", who=who, ndim=1, non_empty=True, finite=True)
        check_tensor(layers, "layers", who=who, shape=(len(timesteps),), dtype="integer")
        if timesteps.min() < 0 or timesteps.max() >= self.num_timesteps:
            raise PriorlabError(f"{who}: timesteps must lie in [0, {self.num_timesteps}), got "
                                f"[{float(timesteps.min())}, {float(timesteps.max())}]")
        if layers.min() < 0 or layers.max() >= self.num_layers:
            raise PriorlabError(f"{who}: layers must lie in [0, {self.num_layers}), got "
                                f"[{int(layers.min())}, {int(layers.max())}]")
        hidden = self.hidden(self.anchor_layer(self.encode(timesteps, layers)))
        if truncation is not None:
            keep = check_number(truncation, "truncation", who=who, low=1, high=self.hidden_dim, integer=True)
            hidden = hidden * (torch.arange(self.hidden_dim) < keep).to(hidden)
        elif self.training and self.nested_dropout_prob > 0:
            hidden = hidden * self._nested_dropout_mask(len(hidden)).to(hidden)
        out = self.output(hidden)
        if self.norm_scale is not None:
            # as the official code: the whole output (embedding and bypass together) is rescaled
            out = F.normalize(out, dim=-1) * self.norm_scale
        if not self.bypass:
            return out, None
        embedding, bypass = out.split(self.embedding_dim, dim=-1)
        return embedding, bypass

    def _nested_dropout_mask(self, batch: int) -> torch.Tensor:
        """Per sample, with probability p, zero the units from a uniform index in [0, hidden) on."""
        cut = torch.randint(0, self.hidden_dim, (batch, 1))
        dropped = torch.rand(batch, 1) < self.nested_dropout_prob
        units = torch.arange(self.hidden_dim)[None]
        return ~(dropped & (units >= cut))


def add_textual_bypass(states: torch.Tensor, positions: torch.Tensor, bypass: torch.Tensor,
                       scale: float = BYPASS_SCALE) -> torch.Tensor:
    """States with the placeholder's state h replaced by h + scale ||h|| b / ||b|| (a new tensor).

    ``states`` (N, L, D) text-encoder outputs, ``positions`` (N,) the placeholder's token index
    per row, ``bypass`` (N, D) the mapper's residual. (For CLIP, pass the states before its
    final LayerNorm, as the official code adds the bypass there.)
    """
    who = "add_textual_bypass"
    check_tensor(states, "states", who=who, ndim=3, dtype="float", non_empty=True)
    n, length, dim = states.shape
    check_tensor(positions, "positions", who=who, shape=(n,), dtype="integer")
    check_tensor(bypass, "bypass", who=who, shape=(n, dim), dtype="float")
    scale = check_number(scale, "scale", who=who, low=0)
    if positions.min() < 0 or positions.max() >= length:
        raise PriorlabError(f"{who}: positions must lie in [0, {length}), got {positions.tolist()}")
    rows = torch.arange(n)
    h = states[rows, positions]
    residual = scale * h.norm(dim=-1, keepdim=True) * F.normalize(bypass, dim=-1)
    return states.index_put((rows, positions), h + residual)


def neti_conditioning(mapper: NeTIMapper, encode: Callable, timesteps: torch.Tensor, *,
                      truncation: int | None = None, bypass_scale: float = BYPASS_SCALE,
                      final_norm: Callable | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (key states, value states) for N prompts at their timesteps.

    ``encode(embeddings)`` runs the text encoder on ``mapper.num_layers`` stacked copies of the N
    prompts, layer-major, with the placeholder's input embedding replaced row by row by
    ``embeddings`` (num_layers * N, D), and returns ``(states, positions)``: (num_layers * N, L, D')
    and the placeholder's index per row. One encoder pass serves every layer. The bypass (if the
    mapper has one) goes into the value states only; ``final_norm`` (CLIP's final LayerNorm, when
    ``encode`` returns states before it) is applied to both afterwards.
    """
    if not isinstance(mapper, NeTIMapper):
        raise PriorlabError(f"neti_conditioning: mapper must be a NeTIMapper, got {type(mapper).__name__}")
    check_tensor(timesteps, "timesteps", who="neti_conditioning", ndim=1, non_empty=True)
    n, layers = len(timesteps), mapper.num_layers
    embedding, bypass = mapper(timesteps.repeat(layers), torch.arange(layers).repeat_interleave(n),
                               truncation=truncation)
    states, positions = encode(embedding)
    check_tensor(states, "encode(...) states", who="neti_conditioning", ndim=3, dtype="float")
    if len(states) != n * layers:
        raise PriorlabError(f"neti_conditioning: encode returned {len(states)} rows for {layers} layers "
                            f"x {n} prompts")
    values = states if bypass is None else add_textual_bypass(states, positions, bypass, bypass_scale)
    if final_norm is not None:
        states, values = final_norm(states), final_norm(values)
    return list(zip(states.split(n), values.split(n)))


def cross_attention_names(unet: nn.Module) -> list[str]:
    """Names of the U-Net's cross-attention modules in execution order (down, mid, up): the
    layer index l the mapper sees."""
    rank = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    names = [name for name, module in unet.named_modules() if getattr(module, "is_cross_attention", False)
             and hasattr(module, "to_k")]
    if not names:
        raise PriorlabError("cross_attention_names: the model has no cross-attention layers")
    return sorted(names, key=lambda name: rank.get(name.split(".")[0], 3))


def _attend(attn, hidden_states, key_states, value_states, attention_mask, temb):
    """diffusers' scaled-dot-product attention with separate key and value context states."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
    if image_shape is not None:
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    batch = key_states.shape[0]
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, key_states.shape[1], batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        key_states = attn.norm_encoder_hidden_states(key_states)
        value_states = attn.norm_encoder_hidden_states(value_states)
    query, key, value = attn.to_q(hidden_states), attn.to_k(key_states), attn.to_v(value_states)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
    out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)))
    if image_shape is not None:
        out = out.transpose(1, 2).reshape(image_shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class NeTIAttnProcessor:
    """Wraps an attention processor; a cross-attention layer with index ``layer_index`` reads
    its own (key, value) states from ``cross_attention_kwargs["neti_states"][layer_index]``
    (the official XTI processor's role). Without them, or for self-attention
    (``layer_index`` None), the wrapped processor runs unchanged."""

    def __init__(self, base, layer_index: int | None):
        self.base = base
        self.layer_index = layer_index

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 neti_states: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None):
        if neti_states is None or self.layer_index is None:
            return self.base(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                             attention_mask=attention_mask, temb=temb)
        if self.layer_index >= len(neti_states):
            raise PriorlabError(f"NeTIAttnProcessor: {len(neti_states)} per-layer states for a U-Net "
                                f"with cross-attention layer {self.layer_index}")
        keys, values = neti_states[self.layer_index]
        if keys.shape != values.shape or keys.shape[0] != hidden_states.shape[0]:
            raise PriorlabError(f"NeTIAttnProcessor: layer {self.layer_index} states {tuple(keys.shape)} / "
                                f"{tuple(values.shape)} do not match a batch of {hidden_states.shape[0]}")
        return _attend(attn, hidden_states, keys, values, attention_mask, temb)


def install_neti_processors(unet: nn.Module) -> list[str]:
    """Wrap every attention processor of a diffusers U-Net (idempotent); returns the
    cross-attention names in layer-index order (``mapper.num_layers`` must equal their number)."""
    if not hasattr(unet, "attn_processors") or not hasattr(unet, "set_attn_processor"):
        raise PriorlabError(f"install_neti_processors: expected a diffusers UNet2DConditionModel, got "
                            f"{type(unet).__name__}")
    names = cross_attention_names(unet)
    index = {name: i for i, name in enumerate(names)}
    processors = {}
    for key, processor in unet.attn_processors.items():
        base = processor.base if isinstance(processor, NeTIAttnProcessor) else processor
        processors[key] = NeTIAttnProcessor(base, index.get(key.removesuffix(".processor")))
    unet.set_attn_processor(processors)
    return names


class NeTIConditionedUNet(nn.Module):
    """A U-Net whose call ``(sample, timestep, encoder_hidden_states)`` conditions its last
    ``n_prompts`` rows on NeTI's per-(timestep, layer) states, so any loop written for a plain
    U-Net (a denoising loss, a DDIM sampler with ``cat([uncond, cond])`` batches) runs NeTI.

    The rows before the last ``n_prompts`` (e.g. the unconditional half under classifier-free
    guidance) keep their ``encoder_hidden_states`` in every layer, as the official pipeline runs
    the negative prompt through the plain text encoder. ``encode`` is as in
    :func:`neti_conditioning`, for ``mapper.num_layers`` copies of the ``n_prompts`` prompts.
    Installs the processors on ``unet``; ``.config`` is the U-Net's.
    """

    def __init__(self, unet: nn.Module, mapper: NeTIMapper, encode: Callable, n_prompts: int, *,
                 truncation: int | None = None, final_norm: Callable | None = None):
        super().__init__()
        names = install_neti_processors(unet)
        if not isinstance(mapper, NeTIMapper) or mapper.num_layers != len(names):
            raise PriorlabError(f"NeTIConditionedUNet: the U-Net has {len(names)} cross-attention layers; "
                                f"mapper must be a NeTIMapper with num_layers={len(names)}, got "
                                f"{getattr(mapper, 'num_layers', type(mapper).__name__)}")
        self.unet, self.mapper, self.encode = unet, mapper, encode
        self.n_prompts = check_number(n_prompts, "n_prompts", who="NeTIConditionedUNet", low=1, integer=True)
        self.truncation, self.final_norm = truncation, final_norm
        self.config = unet.config

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor):
        batch, n = len(sample), self.n_prompts
        if batch < n or len(encoder_hidden_states) != batch:
            raise PriorlabError(f"NeTIConditionedUNet: a batch of {batch} samples with "
                                f"{len(encoder_hidden_states)} context rows for {n} NeTI prompts")
        timesteps = torch.as_tensor(timestep).flatten()
        timesteps = timesteps.expand(batch) if timesteps.numel() == 1 else timesteps
        layers = neti_conditioning(self.mapper, self.encode, timesteps[batch - n:],
                                   truncation=self.truncation, final_norm=self.final_norm)
        plain = encoder_hidden_states[:batch - n]
        states = [(torch.cat([plain, k]), torch.cat([plain, v])) for k, v in layers]
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         cross_attention_kwargs={NETI_KWARG: states})


def remove_neti_processors(unet: nn.Module) -> None:
    """Restore the processors :func:`install_neti_processors` wrapped."""
    unet.set_attn_processor({key: processor.base if isinstance(processor, NeTIAttnProcessor) else processor
                             for key, processor in unet.attn_processors.items()})
