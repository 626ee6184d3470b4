"""Arbitrary-scale decoding of an autoencoder's latent: the decoder without up-scaling, then LIIF.

Kim & Kim, "Arbitrary-Scale Image Generation and Upsampling using Latent Diffusion Model and
Implicit Neural Decoder", CVPR 2024, arXiv:2403.10255 (no official code). The pipeline is a
pretrained autoencoder ``(E, D)``, a latent diffusion model and an *implicit neural decoder*

    I(z)(x, cell) = f_theta(D_phi(z); x, cell)

where ``D_phi`` is the autoencoder's decoder with its up-scaling layers removed (every layer
runs at the latent's resolution) and ``f_theta`` is a local implicit image function (LIIF,
:class:`priorlab.fields.LocalImplicitDecoder`), so the latent can be decoded at any output
size. Training aligns the parts in two stages:

1. the implicit decoder learns to decode the frozen encoder's latents, with an L1 loss against
   the image at random output sizes (:func:`alignment_loss` with the decoder trainable);
2. the latent denoiser learns ``L = L_denoise + lambda * L_align``: its one-step estimate of the
   clean latent, ``z0_hat = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)``, is decoded by the
   *frozen* implicit decoder and compared with the image (:func:`alignment_loss` again); the
   image-space error reaches the denoiser through the fixed decoder.

This module holds the autoencoder (:class:`LatentAutoencoder` with its fixed-scale decoder
:class:`FixedScaleDecoder`), :class:`ArbitraryScaleDecoder`, :func:`alignment_loss`, and a
tiny DDPM in latent space (:class:`NoiseSchedule`, :class:`LatentDenoiser`,
:func:`denoising_loss`) for conditional generation (super-resolution from a low-resolution image).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from priorlab import fields
from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def _conv(cin: int, cout: int, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2)


def _body(latent_channels: int, width: int) -> nn.Sequential:
    """The decoder's layers at the latent's resolution (shared by both decoders, so that
    :meth:`ArbitraryScaleDecoder.from_fixed` can copy them)."""
    return nn.Sequential(_conv(latent_channels, width), nn.ReLU(), _conv(width, width), nn.ReLU())


def _size(value, name: str, who: str) -> int:
    return check_number(value, name, who=who, low=1, integer=True)


class FixedScaleDecoder(nn.Module):
    """``z (B, c_z, h, w) -> image (B, C, scale*h, scale*w)``: convolutions at the latent's
    resolution (``body``), one nearest up-scaling by the integer ``scale``, one convolution at
    the output resolution (``refine``) and the output convolution (``head``)."""

    def __init__(self, latent_channels: int, out_channels: int = 1, width: int = 32, scale: int = 2):
        super().__init__()
        who = "FixedScaleDecoder"
        self.latent_channels = _size(latent_channels, "latent_channels", who)
        width, out_channels = _size(width, "width", who), _size(out_channels, "out_channels", who)
        self.scale = check_number(scale, "scale", who=who, low=1, integer=True)
        self.body = _body(self.latent_channels, width)
        self.refine = nn.Sequential(_conv(width, width), nn.ReLU())
        self.head = _conv(width, out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_tensor(z, "z", who="FixedScaleDecoder", shape=(None, self.latent_channels, None, None),
                     dtype="float", non_empty=True)
        h = self.body(z)
        if self.scale > 1:
            h = F.interpolate(h, scale_factor=self.scale, mode="nearest")
        return self.head(self.refine(h))


class LatentAutoencoder(nn.Module):
    """A small convolutional autoencoder that downsamples by ``factor`` (the LDM's f).

    ``encode``: (B, C, H, W) -> (B, latent_channels, H/f, W/f); ``decode`` is a
    :class:`FixedScaleDecoder` with ``scale=factor``, so it only outputs the training size.
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 3, width: int = 32, factor: int = 2):
        super().__init__()
        who = "LatentAutoencoder"
        self.in_channels = _size(in_channels, "in_channels", who)
        self.latent_channels = _size(latent_channels, "latent_channels", who)
        self.width = _size(width, "width", who)
        self.factor = check_number(factor, "factor", who=who, low=2, integer=True,
                                   hint="the encoder must downsample, e.g. factor=2")
        self.encoder = nn.Sequential(
            _conv(self.in_channels, width), nn.ReLU(),
            nn.Conv2d(width, width, self.factor, stride=self.factor), nn.ReLU(),
            _conv(width, width), nn.ReLU(), nn.Conv2d(width, self.latent_channels, 1))
        self.decoder = FixedScaleDecoder(self.latent_channels, self.in_channels, width, self.factor)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", who="LatentAutoencoder.encode", shape=(None, self.in_channels, None, None),
                     dtype="float", non_empty=True)
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise PriorlabError(f"LatentAutoencoder.encode: image size {tuple(x.shape[-2:])} must be "
                                f"divisible by factor={self.factor}; resize the images first")
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class ArbitraryScaleDecoder(nn.Module):
    """The paper's implicit neural decoder: ``D_phi`` (a :class:`FixedScaleDecoder` without its
    up-scaling and output layers, so ``body`` and ``refine`` run at the latent's resolution)
    followed by LIIF's ``f_theta`` (:class:`priorlab.fields.LocalImplicitDecoder`).

    ``forward(z, coords, cell) -> (B, N, out)`` decodes at coordinates ((row, col) in (-1, 1),
    see :mod:`priorlab.fields.coords`); ``render(z, height, width)`` decodes whole images of any
    size. ``liif_hidden``/``liif_depth`` size LIIF's MLP (the paper uses LIIF's 4 x 256);
    ``feat_unfold=False`` skips LIIF's 3x3 feature unfolding (cheaper; ``D_phi``'s convolutions
    already see each code's neighbourhood).
    """

    def __init__(self, latent_channels: int, out_channels: int = 1, width: int = 32,
                 liif_hidden: int = 256, liif_depth: int = 4, feat_unfold: bool = True):
        super().__init__()
        who = "ArbitraryScaleDecoder"
        self.latent_channels = _size(latent_channels, "latent_channels", who)
        width = _size(width, "width", who)
        self.body = _body(self.latent_channels, width)
        self.refine = nn.Sequential(_conv(width, width), nn.ReLU())
        self.liif = fields.LocalImplicitDecoder(width, _size(out_channels, "out_channels", who),
                                                hidden=_size(liif_hidden, "liif_hidden", who),
                                                depth=_size(liif_depth, "liif_depth", who),
                                                feat_unfold=bool(feat_unfold))

    @classmethod
    def from_fixed(cls, decoder: FixedScaleDecoder, liif_hidden: int = 256, liif_depth: int = 4,
                   feat_unfold: bool = True) -> "ArbitraryScaleDecoder":
        """Start ``D_phi`` from a pretrained fixed-scale decoder's layers (its up-scaling dropped);
        LIIF starts fresh."""
        if not isinstance(decoder, FixedScaleDecoder):
            raise PriorlabError(f"ArbitraryScaleDecoder.from_fixed needs a FixedScaleDecoder, "
                                f"got {type(decoder).__name__}")
        width, out_channels = decoder.body[2].out_channels, decoder.head.out_channels
        new = cls(decoder.latent_channels, out_channels, width, liif_hidden, liif_depth, feat_unfold)
        new.body.load_state_dict(decoder.body.state_dict())
        new.refine.load_state_dict(decoder.refine.state_dict())
        return new

    def features(self, z: torch.Tensor) -> torch.Tensor:
        check_tensor(z, "z", who="ArbitraryScaleDecoder", shape=(None, self.latent_channels, None, None),
                     dtype="float", non_empty=True)
        return self.refine(self.body(z))

    def forward(self, z: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.liif(self.features(z), coords, cell)

    def render(self, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return fields.render(self.liif, self.features(z), height, width)


def sample_queries(targets: torch.Tensor, n_queries: int | None = None,
                   generator: torch.Generator | None = None):
    """Pixel-centre queries of ``targets`` (B, C, H, W): ``(coords, cell, values)`` of shapes
    (B, N, 2), (B, N, 2), (B, N, C). All ``H*W`` pixels when ``n_queries`` is None, else
    ``n_queries`` pixels drawn without replacement for each image (LIIF's training sampling)."""
    check_tensor(targets, "targets", who="sample_queries", ndim=4, dtype="float", non_empty=True,
                 finite=True)
    batch, channels, height, width = targets.shape
    coords = fields.grid_coords(height, width).to(targets)
    values = targets.flatten(2).transpose(1, 2)
    if n_queries is None:
        coords = coords.expand(batch, -1, -1)
    else:
        n_queries = check_number(n_queries, "n_queries", who="sample_queries", low=1,
                                 high=height * width, integer=True,
                                 hint=f"the targets have {height * width} pixels")
        keys = torch.rand(batch, height * width, generator=generator).to(targets.device)
        index = keys.argsort(dim=1)[:, :n_queries]
        coords = coords[index]
        values = values.gather(1, index.unsqueeze(-1).expand(-1, -1, channels))
    return coords, fields.query_cell(coords, height, width), values


def alignment_loss(decoder: ArbitraryScaleDecoder, latents: torch.Tensor, targets: torch.Tensor,
                   n_queries: int | None = None, generator: torch.Generator | None = None,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Image-space L1 between ``decoder(latents)`` rendered at the targets' size and ``targets``.

    Stage 1 (decoder trainable, ``latents`` from the frozen encoder) trains the implicit decoder;
    stage 2 (decoder frozen, ``latents`` the denoiser's ``z0_hat``) is the paper's alignment loss,
    whose gradient reaches the denoiser through the fixed decoder. ``n_queries`` pixels per image
    are drawn (all when None); ``weights`` (B,) weigh the images (mean over the batch).
    """
    who = "alignment_loss"
    if not isinstance(decoder, ArbitraryScaleDecoder):
        raise PriorlabError(f"{who}: decoder must be an ArbitraryScaleDecoder, got {type(decoder).__name__}")
    check_tensor(latents, "latents", who=who, ndim=4, dtype="float", non_empty=True)
    check_tensor(targets, "targets", who=who, shape=(latents.shape[0], None, None, None), dtype="float",
                 hint="one target image per latent")
    coords, cell, values = sample_queries(targets, n_queries, generator)
    per_image = (decoder(latents, coords, cell) - values).abs().flatten(1).mean(1)
    if weights is None:
        return per_image.mean()
    check_tensor(weights, "weights", who=who, shape=(latents.shape[0],), dtype="float", finite=True)
    return (per_image * weights).mean()


class NoiseSchedule:
    """DDPM's forward process with linear betas (Ho et al. 2020), stretched to ``steps`` steps
    (betas ``1e-4 * 1000 / steps`` to ``0.02 * 1000 / steps``, as for 1000 steps)."""

    def __init__(self, steps: int = 100):
        self.steps = check_number(steps, "steps", who="NoiseSchedule", low=2, high=1000, integer=True)
        stretch = 1000.0 / self.steps
        betas = torch.linspace(1e-4 * stretch, 0.02 * stretch, self.steps, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1 - betas, 0).float()

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha_bar.to(t.device)[t].view(-1, 1, 1, 1)

    def noise(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self.abar(t)
        return a.sqrt() * z0 + (1 - a).sqrt() * eps

    def predict_z0(self, zt: torch.Tensor, t: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
        a = self.abar(t)
        return (zt - (1 - a).sqrt() * eps_hat) / a.sqrt()

    @torch.no_grad()
    def sample(self, denoiser: "LatentDenoiser", cond: torch.Tensor, n_steps: int = 25,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Deterministic DDIM sampling (eta = 0, Song et al. 2021) over ``n_steps`` evenly spaced
        steps, from Gaussian noise shaped like a latent at the condition's resolution."""
        n_steps = check_number(n_steps, "n_steps", who="NoiseSchedule.sample", low=1,
                               high=self.steps, integer=True)
        batch, _, height, width = cond.shape
        z = torch.randn(batch, denoiser.latent_channels, height, width, generator=generator).to(cond)
        times = torch.linspace(self.steps - 1, 0, n_steps).round().long().tolist()
        for t, t_next in zip(times, times[1:] + [None]):
            tt = torch.full((batch,), t, dtype=torch.long, device=cond.device)
            eps = denoiser(z, tt, cond)
            z0 = self.predict_z0(z, tt, eps)
            if t_next is not None:
                a_next = self.abar(torch.full_like(tt, t_next))
                z = a_next.sqrt() * z0 + (1 - a_next).sqrt() * eps
        return z0


class LatentDenoiser(nn.Module):
    """A tiny epsilon-predictor: ``(z_t, t, cond) -> eps_hat``. The condition (e.g. the
    low-resolution image, at the latent's resolution) is concatenated to ``z_t``; ``t`` enters
    as a sinusoidal embedding added to every hidden layer."""

    def __init__(self, latent_channels: int, cond_channels: int = 1, width: int = 64, depth: int = 3):
        super().__init__()
        who = "LatentDenoiser"
        self.latent_channels = _size(latent_channels, "latent_channels", who)
        self.cond_channels = check_number(cond_channels, "cond_channels", who=who, low=0, integer=True)
        self.width = _size(width, "width", who)
        depth = _size(depth, "depth", who)
        self.inp = _conv(self.latent_channels + self.cond_channels, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width * depth))
        self.hidden = nn.ModuleList(_conv(width, width) for _ in range(depth))
        self.out = _conv(width, self.latent_channels)

    def _embed(self, t: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None]
        emb = torch.cat([angles.sin(), angles.cos()], dim=1)
        return F.pad(emb, (0, self.width - emb.shape[1]))

    def forward(self, zt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        who = "LatentDenoiser"
        check_tensor(zt, "zt", who=who, shape=(None, self.latent_channels, None, None), dtype="float",
                     non_empty=True)
        check_tensor(t, "t", who=who, shape=(zt.shape[0],), dtype="integer")
        if self.cond_channels:
            check_tensor(cond, "cond", who=who, shape=(zt.shape[0], self.cond_channels, *zt.shape[-2:]),
                         dtype="float", hint="resize the condition to the latent's resolution")
            zt = torch.cat([zt, cond], dim=1)
        shifts = self.time(self._embed(t)).chunk(len(self.hidden), dim=1)
        h = F.silu(self.inp(zt))
        for layer, shift in zip(self.hidden, shifts):
            h = h + F.silu(layer(h) + shift[:, :, None, None])
        return self.out(h)


def denoising_loss(denoiser: LatentDenoiser, schedule: NoiseSchedule, z0: torch.Tensor,
                   cond: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """DDPM's simple loss ``||eps - eps_hat(z_t, t)||^2`` at uniform ``t``; returns
    ``(loss, z0_hat, abar_t)`` so that :func:`alignment_loss` can decode ``z0_hat``."""
    check_tensor(z0, "z0", who="denoising_loss", ndim=4, dtype="float", non_empty=True, finite=True)
    t = torch.randint(0, schedule.steps, (z0.shape[0],), generator=generator).to(z0.device)
    eps = torch.randn(z0.shape, generator=generator).to(z0)
    zt = schedule.noise(z0, t, eps)
    eps_hat = denoiser(zt, t, cond)
    return F.mse_loss(eps_hat, eps), schedule.predict_z0(zt, t, eps_hat), schedule.abar(t).flatten()
