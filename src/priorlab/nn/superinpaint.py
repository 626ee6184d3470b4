"""DEAR: a detail-enhanced attentional implicit representation for SuperInpaint.

Zhang et al., "SuperInpaint: Learning Detail-Enhanced Attentional Implicit Representation for
Super-resolutional Image Inpainting", arXiv:2307.14489 (2023; no official code). SuperInpaint
completes the missing pixels of a *low-resolution* image and renders the completed image at any
higher resolution, with one model. Following the abstract, for a masked image ``x`` with mask
``m`` (1 = missing) on an ``h x w`` grid:

    E   = Enc([x (1 - m), m])                        latent embedding (a deep conv net)
    E_d = E + g(E) * HP(E)                           detail-enhanced embedding; HP a learned
                                                     zero-DC (high-pass) depthwise filter, g an
                                                     input-adaptive gain (0 at init: E_d = E)
    U   = softmax(Q K^T / sqrt(d) + log(1 - m)) V    unmask attention: keys at masked pixels
                                                     are suppressed (the log-validity bias)
    I   = sigmoid(Conv([E_d, U, m]))                 pixel-wise importance map
    c(q) = ImplicitDecoder([E_d, U, I], q)           colour at any coordinate q

The implicit decoder is LIIF's (:class:`priorlab.fields.LocalImplicitDecoder`): for each of the
four codes around ``q`` it is fed the code's detail-enhanced and unmask-attentional embeddings,
its importance value and its spatial offset to ``q`` (plus the query's cell size), and the four
predictions are blended by LIIF's local ensemble. Render with :meth:`DEAR.render` at any size.
With ``skip=True`` (our addition, see the card) the decoder's output is a residual added to a
trivial base, the holes set to the mean known value (:func:`mean_filled`, no inpainting) and
interpolated bicubically at ``q``; the decoder's last layer starts at zero, so an untrained
model returns the base and training starts from bicubic SR with flat holes.

The plain pieces the sequential baselines are built from live here too, so that every arm of
the reproduction shares one encoder design: :class:`ResidualConvEncoder`,
:class:`LIIFSuperResolver` (arbitrary-scale SR, no mask) and :class:`ConvInpainter`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.fields import FourierFeatures, LocalImplicitDecoder, grid_coords, render, sample_image
from priorlab.validation import check_number, check_tensor


def _positive_int(value, name: str, who: str) -> int:
    return check_number(value, name, who=who, low=1, integer=True)


def check_masked_pair(image, mask, who: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate an image (B, C, h, w) and its mask (B, 1, h, w) of values in [0, 1] (1 = missing)."""
    check_tensor(image, "image", who=who, shape=(None, channels, None, None), dtype="float",
                 non_empty=True, finite=True)
    check_tensor(mask, "mask", who=who, shape=(image.shape[0], 1, *image.shape[-2:]),
                 dtype=("float", "bool"), finite=True,
                 hint="pass one mask channel per image, the size of the image, 1 = missing")
    mask = mask.to(image.dtype)
    if bool((mask < 0).any() or (mask > 1).any()):
        raise PriorlabError(f"{who}: mask values must lie in [0, 1] (1 = missing), got range "
                            f"[{float(mask.min()):g}, {float(mask.max()):g}]")
    return image, mask


def _zero_init(layer: nn.Module) -> None:
    """Zero a residual branch's last layer, so a network starts as its base and learns a
    correction to it."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


def _base(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """The global residual's base: bicubic interpolation of ``image`` at ``coords`` -> (B, N, C)."""
    return sample_image(image, coords, mode="bicubic")


def _base_grid(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """:func:`_base` on the whole ``height x width`` pixel grid -> (B, C, height, width)."""
    coords = grid_coords(height, width).to(image).expand(image.shape[0], -1, -1)
    return _base(image, coords).transpose(1, 2).reshape(image.shape[0], -1, height, width)


def mean_filled(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image with each missing pixel set to its image's mean known value (per channel): the
    base of the networks' residual outputs (a constant, not an inpainting)."""
    known = (1 - mask).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    mean = (image * (1 - mask)).sum(dim=(-2, -1), keepdim=True) / known
    return image * (1 - mask) + mask * mean


def masked_input(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[x (1 - m), m]``: the known pixels (holes zeroed) and the mask, as network input."""
    return torch.cat([image * (1 - mask), mask], dim=1)


class ResidualConvEncoder(nn.Module):
    """A conv stem and residual blocks (conv-ReLU-conv, no normalisation, as EDSR), block ``i``
    dilated by ``dilations[i % len(dilations)]`` so a few blocks see across holes."""

    def __init__(self, in_channels: int, channels: int = 32, blocks: int = 4,
                 dilations: tuple[int, ...] = (1, 2, 4, 1)):
        super().__init__()
        who = "ResidualConvEncoder"
        in_channels = _positive_int(in_channels, "in_channels", who)
        self.channels = _positive_int(channels, "channels", who)
        blocks = _positive_int(blocks, "blocks", who)
        dilations = tuple(_positive_int(d, "dilation", who) for d in dilations) or (1,)
        self.stem = nn.Conv2d(in_channels, self.channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        for i in range(blocks):
            d = dilations[i % len(dilations)]
            self.blocks.append(nn.Sequential(
                nn.Conv2d(self.channels, self.channels, 3, padding=d, dilation=d), nn.ReLU(),
                nn.Conv2d(self.channels, self.channels, 3, padding=1)))
        self.out = nn.Conv2d(self.channels, self.channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skip = h
        for block in self.blocks:
            h = h + block(h)
        return self.out(h) + skip


class AdaptiveHighPass(nn.Module):
    """``E + g(E) * HP(E)``: boost each channel's high frequencies by an input-dependent gain.

    ``HP`` is a learned depthwise 3x3 filter with its mean subtracted, so it passes no constant
    (DC) component, whatever it learns; it starts as the Laplacian-like ``identity - box``.
    ``g`` is a 1x1 conv of ``E``, zero at initialisation, so the module starts as the identity.
    """

    def __init__(self, channels: int):
        super().__init__()
        channels = _positive_int(channels, "channels", "AdaptiveHighPass")
        kernel = -torch.ones(channels, 1, 3, 3) / 9
        kernel[:, :, 1, 1] += 1.0
        self.kernel = nn.Parameter(kernel)
        self.gain = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.gain.bias)

    def high_pass(self, e: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel - self.kernel.mean(dim=(-2, -1), keepdim=True)
        return F.conv2d(F.pad(e, (1, 1, 1, 1), mode="replicate"), kernel, groups=e.shape[1])

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e + self.gain(e) * self.high_pass(e)


class UnmaskAttention(nn.Module):
    """Multi-head attention over all latent positions that suppresses masked ones as keys.

    Queries and keys see the embedding and a Fourier encoding of the position (a hole's own
    embedding carries little, so its query needs to know where it is); values are the
    embedding. The attention logits get ``log(max(1 - m, floor))``: a fully masked key is
    down-weighted by ``floor`` (1e-4), a partly masked one in proportion to what is known.
    """

    _FLOOR = 1e-4  # keeps an all-masked image finite (uniform attention) instead of NaN

    def __init__(self, channels: int, heads: int = 2, position_features: int = 8):
        super().__init__()
        who = "UnmaskAttention"
        self.channels = _positive_int(channels, "channels", who)
        self.heads = _positive_int(heads, "heads", who)
        if self.channels % self.heads:
            raise PriorlabError(f"{who}: channels ({channels}) must be divisible by heads ({heads})")
        self.position = FourierFeatures(2, _positive_int(position_features, "position_features", who),
                                        scale=1.0)
        self.query_key = nn.Conv2d(self.channels + self.position.out_dim, 2 * self.channels, 1)
        self.value = nn.Conv2d(self.channels, self.channels, 1)
        self.out = nn.Conv2d(self.channels, self.channels, 1)

    def forward(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = e.shape
        pos = self.position(grid_coords(height, width).to(e))  # (hw, P)
        pos = pos.T.reshape(1, -1, height, width).expand(batch, -1, height, width)
        q, k = self.query_key(torch.cat([e, pos], dim=1)).chunk(2, dim=1)
        head = channels // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, heads, hw, head)
            return t.reshape(batch, self.heads, head, height * width).transpose(-1, -2)

        validity = (1 - mask).clamp_min(self._FLOOR).log().reshape(batch, 1, 1, height * width)
        attended = F.scaled_dot_product_attention(split(q), split(k), split(self.value(e)),
                                                  attn_mask=validity.to(e.dtype))
        attended = attended.transpose(-1, -2).reshape(batch, channels, height, width)
        return self.out(attended)


class DEAR(nn.Module):
    """Detail-enhanced attentional implicit representation (see the module docstring).

    ``embed(image, mask)`` gives the per-pixel codes ``[E_d, U, I]`` (B, 2C+1, h, w);
    ``forward(image, mask, coords, cell)`` decodes them at coordinates (B, N, 2) with cell sizes
    (B, N, 2) in :mod:`priorlab.fields` conventions -> (B, N, C_img); ``render(image, mask, H, W)``
    gives the completed image at any ``H x W``. ``detail``, ``unmask_attention`` and
    ``importance`` switch the three modules off for ablations (their terms are then zeros, so
    the decoder's input size stays the same).
    """

    def __init__(self, in_channels: int = 1, channels: int = 32, blocks: int = 4,
                 heads: int = 2, hidden: int | list[int] = 64, depth: int = 3, *,
                 detail: bool = True, unmask_attention: bool = True, importance: bool = True,
                 skip: bool = True, feat_unfold: bool = True):
        super().__init__()
        who = "DEAR"
        self.in_channels = _positive_int(in_channels, "in_channels", who)
        self.channels = _positive_int(channels, "channels", who)
        self.detail, self.use_attention, self.use_importance = detail, unmask_attention, importance
        self.skip = skip
        self.encoder = ResidualConvEncoder(self.in_channels + 1, self.channels, blocks)
        self.high_pass = AdaptiveHighPass(self.channels)
        self.attention = UnmaskAttention(self.channels, heads)
        self.importance = nn.Conv2d(2 * self.channels + 1, 1, 3, padding=1)
        self.decoder = LocalImplicitDecoder(2 * self.channels + 1, self.in_channels, hidden, depth,
                                            feat_unfold=feat_unfold)
        if skip:
            _zero_init(self.decoder.net[-1])

    def embed(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image, mask = check_masked_pair(image, mask, "DEAR", self.in_channels)
        e = self.encoder(masked_input(image, mask))
        e_d = self.high_pass(e) if self.detail else e
        u = self.attention(e_d, mask) if self.use_attention else torch.zeros_like(e_d)
        if self.use_importance:
            weight = torch.sigmoid(self.importance(torch.cat([e_d, u, mask], dim=1)))
        else:
            weight = torch.zeros_like(mask)
        return torch.cat([e_d, u, weight], dim=1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, coords: torch.Tensor,
                cell: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.embed(image, mask), coords, cell)
        return out + _base(mean_filled(image, mask), coords) if self.skip else out

    def importance_map(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The pixel-wise importance ``I`` (B, 1, h, w) the decoder is given."""
        return self.embed(image, mask)[:, -1:]

    def render(self, image: torch.Tensor, mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The completed image at ``height x width`` (any size), (B, C, height, width)."""
        out = render(self.decoder, self.embed(image, mask), height, width)
        return out + _base_grid(mean_filled(image, mask), height, width) if self.skip else out


class LIIFSuperResolver(nn.Module):
    """Plain LIIF (the sequential baselines' arbitrary-scale SR stage): encoder + decoder, no mask."""

    def __init__(self, in_channels: int = 1, channels: int = 32, blocks: int = 4,
                 hidden: int | list[int] = 64, depth: int = 3, skip: bool = True,
                 feat_unfold: bool = True):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels", "LIIFSuperResolver")
        self.skip = skip
        self.encoder = ResidualConvEncoder(self.in_channels, channels, blocks)
        self.decoder = LocalImplicitDecoder(self.encoder.channels, self.in_channels, hidden, depth,
                                            feat_unfold=feat_unfold)
        if skip:
            _zero_init(self.decoder.net[-1])

    def forward(self, image: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        check_tensor(image, "image", who="LIIFSuperResolver", shape=(None, self.in_channels, None, None),
                     dtype="float", non_empty=True, finite=True)
        out = self.decoder(self.encoder(image), coords, cell)
        return out + _base(image, coords) if self.skip else out

    def render(self, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
        check_tensor(image, "image", who="LIIFSuperResolver", shape=(None, self.in_channels, None, None),
                     dtype="float", non_empty=True, finite=True)
        out = render(self.decoder, self.encoder(image), height, width)
        return out + _base_grid(image, height, width) if self.skip else out


class ConvInpainter(nn.Module):
    """A fixed-resolution inpainting CNN (the sequential baselines' inpainting stage): keeps the
    known pixels and predicts the missing ones from ``[x (1 - m), m]`` as a residual over the
    mean known value, ``mean_filled(x, m) + m * CNN([x (1 - m), m])`` (head zero at init)."""

    def __init__(self, in_channels: int = 1, channels: int = 32, blocks: int = 4):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels", "ConvInpainter")
        self.encoder = ResidualConvEncoder(self.in_channels + 1, channels, blocks)
        self.head = nn.Conv2d(self.encoder.channels, self.in_channels, 3, padding=1)
        _zero_init(self.head)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image, mask = check_masked_pair(image, mask, "ConvInpainter", self.in_channels)
        return mean_filled(image, mask) + mask * self.head(self.encoder(masked_input(image, mask)))


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters (to match the arms' capacities)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["DEAR", "AdaptiveHighPass", "ConvInpainter", "LIIFSuperResolver", "ResidualConvEncoder",
           "UnmaskAttention", "check_masked_pair", "masked_input", "parameter_count"]
