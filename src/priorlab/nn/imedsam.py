"""I-MedSAM: a frozen SAM image encoder with adapters, decoded by a two-stage implicit field.

Wei, Cao, Jin, Lu, Wang & Zhang, "I-MedSAM: Implicit Medical Image Segmentation with Segment
Anything", ECCV 2024, arXiv:2311.17081; official code github.com/ucwxb/I-MedSAM (read at
a48d54a: ``model/IMedSAM.py``, ``segment_anything/modeling/{image_encoder,mask_decoder}.py``).

Encoder (:class:`IMedSAMEncoder`), around a frozen SAM-style ViT (a ``transformers``
``SamModel`` / ``SamVisionModel`` / ``SamVisionEncoder``, or :class:`TinySamEncoder`):

- frequency adapter: the centred FFT magnitude of the image (min-max normalised) goes through the
  frozen patch embedding; a chain of bottleneck adapters ``f_l = A_l(LN_l(f_{l-1}))`` runs beside
  the blocks and each block's output gets ``+ 0.5 f_l``;
- gated LoRA on each block's qkv projection: ``qkv(x) + g(x) [B_q A_q x, 0, B_v A_v x]``, with
  ``g`` a linear gate on the block input's spatial mean and ``B`` zero-initialised.

Decoder (:class:`ImplicitSegDecoder`): the features are upscaled 4x (SAM's ``output_upscaling``)
and read at any coordinates, with a positional code and a frequency encoding of the coordinate.
A coarse MLP predicts a logit and a feature per point; two Monte-Carlo dropout samples of that
output give a per-point variance, and a second MLP re-predicts the ``top_k_ratio`` most
uncertain points from their input and coarse feature (uncertainty-guided sampling).
:func:`imedsam_loss` is the official Dice+CE on both stages, shifting weight to the fine one.
:class:`PixelSegDecoder` is the discrete counterpart (same upscaling, a per-pixel logit).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.fields import FourierFeatures, grid_coords, sample_image
from priorlab.validation import check_number, check_tensor

LORA_TARGETS = ("q", "k", "v")


def frequency_image(images: torch.Tensor) -> torch.Tensor:
    """The official frequency input: ``|fftshift(fft2(grey))|`` min-max normalised per image,
    repeated over the channels; (B, C, H, W) -> (B, C, H, W)."""
    check_tensor(images, "images", who="frequency_image", ndim=4, dtype="float", non_empty=True)
    grey = images.detach().float().mean(1)
    magnitude = torch.fft.fftshift(torch.fft.fft2(grey), dim=(-2, -1)).abs().flatten(1)
    low, high = magnitude.min(1, keepdim=True).values, magnitude.max(1, keepdim=True).values
    normalised = (magnitude - low) / (high - low).clamp_min(1e-12)
    return normalised.view_as(grey).unsqueeze(1).expand_as(images).to(images.dtype)


class GatedLoRAQKV(nn.Module):
    """A frozen qkv projection plus gated low-rank updates on the chosen slices (official
    ``LoRA_qkv``); input (B, H, W, D) or any (B, ..., D)."""

    def __init__(self, qkv: nn.Linear, rank: int = 4, targets: str = "qv"):
        super().__init__()
        if not isinstance(qkv, nn.Linear) or qkv.out_features != 3 * qkv.in_features:
            raise PriorlabError(f"GatedLoRAQKV wraps an nn.Linear(D, 3D) qkv projection, got {qkv!r}")
        rank = check_number(rank, "rank", who="GatedLoRAQKV", low=1, integer=True)
        if not targets or any(t not in LORA_TARGETS for t in targets) or len(set(targets)) < len(targets):
            raise PriorlabError(f"targets must be distinct letters of 'qkv', got {targets!r}; e.g. 'qv'")
        self.qkv, self.dim, self.targets = qkv, qkv.in_features, targets
        self.lora_a = nn.ModuleDict({t: nn.Linear(self.dim, rank, bias=False) for t in targets})
        self.lora_b = nn.ModuleDict({t: nn.Linear(rank, self.dim, bias=False) for t in targets})
        self.gate = nn.Linear(self.dim, 1, bias=False)
        for layer in self.lora_b.values():
            nn.init.zeros_(layer.weight)  # starts as the frozen projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate(x.flatten(1, -2).mean(1)).view(-1, *([1] * (x.ndim - 1)))
        zero = x.new_zeros(*x.shape[:-1], self.dim)
        delta = [self.lora_b[t](self.lora_a[t](x)) if t in self.targets else zero for t in LORA_TARGETS]
        return self.qkv(x) + gate * torch.cat(delta, dim=-1)


class FrequencyAdapter(nn.Module):
    """``LN`` then the official bottleneck ``x + W2 gelu(W1 x)`` (hidden width 4)."""

    def __init__(self, dim: int, hidden: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down, self.up = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return x + self.up(F.gelu(self.down(x)))


def _vision_encoder(base: nn.Module) -> nn.Module:
    encoder = getattr(base, "vision_encoder", base)  # SamModel / SamVisionModel hold one
    missing = [a for a in ("patch_embed", "pos_embed", "layers", "neck") if not hasattr(encoder, a)]
    if missing:
        raise PriorlabError(f"IMedSAMEncoder needs a SAM-style vision encoder (patch_embed, pos_embed, "
                            f"layers, neck: a transformers SamVisionEncoder or TinySamEncoder); "
                            f"{type(base).__name__} lacks {missing}")
    return encoder


class IMedSAMEncoder(nn.Module):
    """Freezes ``base`` and adds gated LoRA (in place, on every layer's ``attn.qkv``) and the
    frequency adapter chain; ``forward(images (B,C,H,W)) -> features (B, C_out, h, w)``.

    ``freq_scale`` is the weight of the frequency stream (official 0.5; 0 switches it off).
    With ``freq_scale=0`` and untrained LoRA the output equals the frozen encoder's.
    """

    def __init__(self, base: nn.Module, rank: int = 4, lora_targets: str = "qv",
                 adapter_hidden: int = 4, freq_scale: float = 0.5):
        super().__init__()
        self.encoder = _vision_encoder(base)
        self.freq_scale = check_number(freq_scale, "freq_scale", who="IMedSAMEncoder", low=0.0)
        adapter_hidden = check_number(adapter_hidden, "adapter_hidden", who="IMedSAMEncoder", low=1,
                                      integer=True)
        if any(isinstance(layer.attn.qkv, GatedLoRAQKV) for layer in self.encoder.layers):
            raise PriorlabError("this encoder already carries I-MedSAM's LoRA; wrap a fresh encoder")
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        dim = self.encoder.layers[0].attn.qkv.in_features
        for layer in self.encoder.layers:
            layer.attn.qkv = GatedLoRAQKV(layer.attn.qkv, rank, lora_targets)
        self.freq_adapters = nn.ModuleList(FrequencyAdapter(dim, adapter_hidden)
                                           for _ in self.encoder.layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor(images, "images", who="IMedSAMEncoder", ndim=4, dtype="float", non_empty=True,
                     finite=True)
        enc = self.encoder
        hidden = enc.patch_embed(images)
        freq = enc.patch_embed(frequency_image(images)) if self.freq_scale > 0 else None
        if enc.pos_embed is not None:
            hidden = hidden + enc.pos_embed
            freq = None if freq is None else freq + enc.pos_embed
        for layer, adapter in zip(enc.layers, self.freq_adapters):
            out = layer(hidden)
            hidden = out[0] if isinstance(out, tuple) else out  # transformers 4.x returns a tuple
            if freq is not None:
                freq = adapter(freq)
                hidden = hidden + self.freq_scale * freq
        out = enc.neck(hidden)
        return getattr(out, "last_hidden_state", out)


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x).permute(0, 2, 3, 1)  # (B, h, w, D), SAM's layout


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, d))


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.layer_norm1, self.attn = nn.LayerNorm(dim), _Attention(dim, heads)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(),
                                 nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of (B, C, H, W) (SAM's)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Neck(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                                  LayerNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 3, 1, 2))


class TinySamEncoder(nn.Module):
    """A small ViT with SAM's encoder layout (patch embedding, absolute positions, global-attention
    blocks, conv neck), to pre-train here as the stand-in for SAM; (B,C,S,S) -> (B,out,S/p,S/p)."""

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_channels: int = 1, dim: int = 64,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, out_channels: int = 32):
        super().__init__()
        who = "TinySamEncoder"
        image_size = check_number(image_size, "image_size", who=who, low=1, integer=True)
        patch_size = check_number(patch_size, "patch_size", who=who, low=1, integer=True)
        if image_size % patch_size or dim % heads:
            raise PriorlabError(f"{who}: image_size must be a multiple of patch_size and dim of heads, "
                                f"got {image_size}, {patch_size}, {dim}, {heads}")
        grid = image_size // patch_size
        self.patch_embed = _PatchEmbed(in_channels, dim, patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, grid, grid, dim) * 0.02)
        self.layers = nn.ModuleList(_Layer(dim, heads, mlp_ratio) for _ in range(depth))
        self.neck = _Neck(dim, out_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = self.patch_embed(images) + self.pos_embed
        for layer in self.layers:
            hidden = layer(hidden)
        return self.neck(hidden)


def sam_upscaling(channels: int) -> nn.Sequential:
    """SAM's ``output_upscaling``: two stride-2 transposed convs, channels -> channels / 8, 4x size."""
    if channels % 8:
        raise PriorlabError(f"feature channels must be a multiple of 8 (SAM's upscaling divides by 8), "
                            f"got {channels}")
    return nn.Sequential(nn.ConvTranspose2d(channels, channels // 4, 2, stride=2), LayerNorm2d(channels // 4),
                         nn.GELU(), nn.ConvTranspose2d(channels // 4, channels // 8, 2, stride=2), nn.GELU())


class FrequencyEncoding(nn.Module):
    """``[x, sin(2 pi 2^e x), cos(2 pi 2^e x)]`` for ``e`` in ``linspace(0, max_freq_exp, n)``
    (official ``FrequancyEncoding``), ordered from the lowest band up. ``progress`` in (0, 1]
    keeps the first ``int(progress * C) + 3`` channels and zeroes the rest (the official
    coarse-to-fine schedule, epoch_T = (epoch + 1) / 20)."""

    def __init__(self, num_frequencies: int = 10, max_freq_exp: float = 10.0, in_dim: int = 2):
        super().__init__()
        who = "FrequencyEncoding"
        n = check_number(num_frequencies, "num_frequencies", who=who, low=1, integer=True)
        top = check_number(max_freq_exp, "max_freq_exp", who=who, low=0.0)
        self.in_dim = in_dim
        self.register_buffer("freqs", 2.0 ** torch.linspace(0.0, top, n), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.in_dim * (1 + 2 * len(self.freqs))

    def forward(self, coords: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        progress = check_number(progress, "progress", who="FrequencyEncoding", low=0.0, high=1.0)
        angles = 2 * math.pi * coords.unsqueeze(-2) * self.freqs[:, None].to(coords)  # (..., n, d)
        bands = torch.stack([angles.sin(), angles.cos()], dim=-2).flatten(-3)  # low band first
        encoded = torch.cat([coords, bands], dim=-1)
        keep = min(int(progress * self.out_dim) + 3, self.out_dim)
        if keep < self.out_dim:
            encoded = torch.cat([encoded[..., :keep], encoded.new_zeros(*encoded.shape[:-1],
                                                                        self.out_dim - keep)], -1)
        return encoded


def _bn_mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()]
    return nn.Sequential(*layers)


class ImplicitSegOutput(NamedTuple):
    coarse: torch.Tensor  # first-stage logits
    fine: torch.Tensor  # coarse logits with the selected points re-predicted by the second stage
    uncertainty: torch.Tensor  # MC-dropout variance of the first stage's output, per point
    refined: torch.Tensor  # bool: the points the second stage re-predicted


class ImplicitSegDecoder(nn.Module):
    """Two-stage implicit segmentation decoder with uncertainty-guided resampling (official
    ``SegField``); ``forward(features (B,C,h,w), coords (B,N,2), progress) -> ImplicitSegOutput``
    of (B, N) tensors. Coordinates are (row, col) in (-1, 1) (:mod:`priorlab.fields`).

    ``seed`` gives the MC-dropout masks their own generator, saved in the state_dict.
    """

    def __init__(self, feat_dim: int, features: int = 256, pe_features: int = 128,
                 num_frequencies: int = 10, max_freq_exp: float = 10.0, top_k_ratio: float = 0.125,
                 dropout: float = 0.5, seed: int | None = None):
        super().__init__()
        who = "ImplicitSegDecoder"
        self.feat_dim = check_number(feat_dim, "feat_dim", who=who, low=8, integer=True)
        width = check_number(features, "features", who=who, low=2, integer=True)
        self.top_k_ratio = check_number(top_k_ratio, "top_k_ratio", who=who, low=0.0, high=1.0)
        self.dropout = check_number(dropout, "dropout", who=who, low=0.0, high=1.0, high_open=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise PriorlabError(f"{who}: seed must be an integer or None, got {seed!r}")
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.upscaling = sam_upscaling(self.feat_dim)
        self.position = FourierFeatures(2, pe_features, scale=1.0, seed=0)  # SAM's random dense PE
        self.encoding = FrequencyEncoding(num_frequencies, max_freq_exp)
        in_dim = self.feat_dim // 8 + self.position.out_dim + self.encoding.out_dim
        self.coarse = nn.Sequential(_bn_mlp([in_dim, 4 * width, 2 * width]), nn.Linear(2 * width, width + 1))
        self.fine = nn.Sequential(_bn_mlp([in_dim + width, width, width, width // 2]),
                                  nn.Linear(width // 2, 1))

    def _keep_mask(self, like: torch.Tensor) -> torch.Tensor:
        draw = torch.rand(like.shape, generator=self.generator).to(like)
        return (draw >= self.dropout).to(like) / (1.0 - self.dropout)

    def forward(self, features: torch.Tensor, coords: torch.Tensor,
                progress: float = 1.0) -> ImplicitSegOutput:
        who = "ImplicitSegDecoder"
        check_tensor(features, "features", who=who, shape=(None, self.feat_dim, None, None), dtype="float",
                     non_empty=True, finite=True)
        batch = features.shape[0]
        check_tensor(coords, "coords", who=who, shape=(batch, None, 2), dtype="float", non_empty=True,
                     hint="pass (B, N, 2) (row, col) coordinates in (-1, 1), e.g. fields.grid_coords")
        n = coords.shape[1]
        coords = coords.to(features.dtype)
        inputs = torch.cat([sample_image(self.upscaling(features), coords), self.position(coords),
                            self.encoding(coords, progress)], dim=-1)
        out = self.coarse(inputs.flatten(0, 1))  # (B*N, width + 1)
        # two MC-dropout samples of the first stage; their variance ranks the points
        keep_a, keep_b = self._keep_mask(out), self._keep_mask(out)
        with torch.no_grad():
            variance = ((out * (keep_a - keep_b)) ** 2 / 2).mean(-1).view(batch, n)
        sample = out * keep_b if self.training else out
        coarse, code = sample[:, 0].view(batch, n), sample[:, 1:].view(batch, n, -1)
        k = int(n * self.top_k_ratio)
        refined = torch.zeros_like(coarse, dtype=torch.bool)
        if k == 0:
            return ImplicitSegOutput(coarse, coarse, variance, refined)
        index = variance.topk(k, dim=1).indices  # (B, k)
        picked = torch.cat([inputs.gather(1, index[..., None].expand(-1, -1, inputs.shape[-1])),
                            code.gather(1, index[..., None].expand(-1, -1, code.shape[-1]))], dim=-1)
        fine = coarse.scatter(1, index, self.fine(picked.flatten(0, 1)).view(batch, k))
        return ImplicitSegOutput(coarse, fine, variance, refined.scatter(1, index, True))

    def get_extra_state(self):
        return {"generator": None if self.generator is None else self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        if self.generator is not None and isinstance(state, dict) and state.get("generator") is not None:
            self.generator.set_state(state["generator"])


class PixelSegDecoder(nn.Module):
    """The discrete baseline: SAM's upscaling and a per-pixel logit (SAM's mask head without prompt
    tokens); another output size is reached by resizing the logits bilinearly."""

    def __init__(self, feat_dim: int):
        super().__init__()
        self.upscaling = sam_upscaling(check_number(feat_dim, "feat_dim", who="PixelSegDecoder", low=8,
                                                    integer=True))
        self.head = nn.Conv2d(feat_dim // 8, 1, 1)

    def forward(self, features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        logits = self.head(self.upscaling(features))
        if size is not None and tuple(size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits


class IMedSAM(nn.Module):
    """Encoder + implicit decoder; ``forward(images, size=None, progress=1.0)`` returns an
    ImplicitSegOutput of (B, 1, H, W) maps at ``size`` (default: the input's size)."""

    def __init__(self, encoder: nn.Module, decoder: ImplicitSegDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, images: torch.Tensor, size: tuple[int, int] | None = None,
                progress: float = 1.0) -> ImplicitSegOutput:
        height, width = images.shape[-2:] if size is None else size
        features = self.encoder(images)
        coords = grid_coords(height, width).to(features)
        out = self.decoder(features, coords.expand(features.shape[0], -1, -1), progress)
        return ImplicitSegOutput(*(t.view(-1, 1, height, width) for t in out))


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.8,
                 ce_weight: float = 0.2) -> torch.Tensor:
    """MONAI's ``DiceCELoss(sigmoid=True, squared_pred=True, lambda_dice=0.8, lambda_ce=0.2)``:
    per-image soft Dice on sigmoid probabilities (squared denominators) plus binary CE."""
    check_tensor(logits, "logits", who="dice_ce_loss", min_ndim=2, dtype="float", non_empty=True)
    check_tensor(target, "target", who="dice_ce_loss", shape=tuple(logits.shape), dtype="float",
                 hint="target: a float mask of the logits' shape")
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1e-5) / ((p * p).sum(1) + (t * t).sum(1) + 1e-5)
    return dice_weight * dice.mean() + ce_weight * F.binary_cross_entropy_with_logits(logits, target)


def imedsam_loss(output: ImplicitSegOutput, target: torch.Tensor, fine_weight: float = 1.0) -> torch.Tensor:
    """``(1 - w) L(coarse) + w L(fine)``; officially ``w = min((epoch + 1) / 5, 1)``."""
    w = check_number(fine_weight, "fine_weight", who="imedsam_loss", low=0.0, high=1.0)
    return (1 - w) * dice_ce_loss(output.coarse, target) + w * dice_ce_loss(output.fine, target)


def imedsam_param_groups(model: nn.Module, lr: float = 1e-3, other_lr_scale: float = 0.05) -> list[dict]:
    """The official optimiser groups: the INR MLPs at ``lr``, every other trainable parameter
    (LoRA, adapters, upscaling) at ``other_lr_scale * lr``; frozen parameters are left out."""
    lr = check_number(lr, "lr", who="imedsam_param_groups", low=0.0, low_open=True)
    scale = check_number(other_lr_scale, "other_lr_scale", who="imedsam_param_groups", low=0.0)
    inr, other = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_inr = ".coarse." in f".{name}" or ".fine." in f".{name}"
            (inr if is_inr else other).append(p)
    if not inr and not other:
        raise PriorlabError("imedsam_param_groups: the model has no trainable parameter")
    return [g for g in ({"params": inr, "lr": lr}, {"params": other, "lr": scale * lr}) if g["params"]]
