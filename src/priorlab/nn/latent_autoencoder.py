"""Small convolutional autoencoders for 1-channel images (procedural shapes, dSprites-like).

Shared by the disentanglement reproductions: the QLAE paper ("Disentanglement via Latent
Quantization", Hsu et al., NeurIPS 2023, arXiv 2305.18378) compares a quantised-latent
autoencoder with a plain autoencoder and a beta-VAE (Higgins et al., ICLR 2017); latent
traversals need a trained VAE to walk through.

Losses follow the official QLAE code (kylehkhsu/latent_quantization): the reconstruction term is
the binary cross-entropy per pixel (mean over pixels and batch); the beta-VAE adds
``beta * KL(q(z|x) || N(0, I)) / n_pixels`` (the KL summed over latents), which is the usual
beta-VAE objective divided by the number of pixels.

- :class:`ShapesEncoder` / :class:`ShapesDecoder`: stride-2 conv stacks down to 4x4 and back.
- :class:`Autoencoder`: encoder -> optional bottleneck module (e.g.
  :class:`priorlab.nn.latent_quantization.QuantizedLatent`) -> decoder.
- :class:`BetaVAE`: a diagonal-Gaussian encoder, reparametrised samples in training, the mean at
  evaluation.

Every model has ``encode(x)`` (the representation: the latent used downstream, e.g. for metrics
or traversals), ``decode(z)`` (pixel probabilities in [0, 1]), ``decode_logits(z)`` and
``loss(x) -> (total, terms)`` where ``terms`` holds detached floats for logging.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def _levels(size: int, who: str) -> int:
    size = check_number(size, "size", who=who, low=8, integer=True)
    levels = math.log2(size / 4)
    if not levels.is_integer():
        raise PriorlabError(f"{who}: size must be a power of two >= 8, got {size}")
    return int(levels)


class ShapesEncoder(nn.Module):
    """(n, 1, size, size) images -> (n, latent_dim) with stride-2 4x4 convs and two linear layers."""

    def __init__(self, latent_dim: int, size: int = 32, *, width: int = 32, hidden: int = 256):
        super().__init__()
        latent_dim = check_number(latent_dim, "latent_dim", who="ShapesEncoder", low=1, integer=True)
        width = check_number(width, "width", who="ShapesEncoder", low=1, integer=True)
        self.size = size
        layers, channels = [], 1
        for _ in range(_levels(size, "ShapesEncoder")):
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU()]
            channels = width
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * 16, hidden), nn.ReLU(),
                                 nn.Linear(hidden, latent_dim))
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", who="ShapesEncoder", shape=(None, 1, self.size, self.size), dtype="float")
        return self.net(x)


class ShapesDecoder(nn.Module):
    """(n, latent_dim) latents -> (n, 1, size, size) pixel logits (mirror of ShapesEncoder)."""

    def __init__(self, latent_dim: int, size: int = 32, *, width: int = 32, hidden: int = 256):
        super().__init__()
        self.latent_dim = check_number(latent_dim, "latent_dim", who="ShapesDecoder", low=1,
                                       integer=True)
        width = check_number(width, "width", who="ShapesDecoder", low=1, integer=True)
        levels = _levels(size, "ShapesDecoder")
        layers = [nn.Linear(self.latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, width * 16),
                  nn.ReLU(), nn.Unflatten(1, (width, 4, 4))]
        for level in range(levels):
            last = level == levels - 1
            layers.append(nn.ConvTranspose2d(width, 1 if last else width, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        _he_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_tensor(z, "z", who="ShapesDecoder", shape=(None, self.latent_dim), dtype="float")
        return self.net(z)


def _he_init(module: nn.Module) -> None:
    """He (Kaiming) init for the ReLU stacks: PyTorch's default init shrinks activations by about
    3x per layer, so encoder outputs start ~100x smaller than a QLAE codebook's spacing and every
    latent sits on one value for hundreds of steps."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)


def reconstruction_bce(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per pixel, averaged over pixels and batch (targets in [0, 1])."""
    return F.binary_cross_entropy_with_logits(logits, x)


class _Decoding(nn.Module):
    """Decoding shared by the autoencoders: ``self.decoder`` maps latents to pixel logits."""

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction probabilities (from the posterior mean for the VAE)."""
        return self.decode(self.encode(x))


class Autoencoder(_Decoding):
    """Deterministic autoencoder; ``bottleneck`` (if given) maps encoder outputs to latents and
    may add its own loss terms: it returns ``(latents, {name: weighted loss tensor})``."""

    def __init__(self, latent_dim: int, size: int = 32, *, bottleneck: nn.Module | None = None,
                 width: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = ShapesEncoder(latent_dim, size, width=width)
        self.bottleneck = bottleneck
        self.decoder = ShapesDecoder(latent_dim, size, width=width)

    def _latents(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        h = self.encoder(x)
        return self.bottleneck(h) if self.bottleneck is not None else (h, {})

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._latents(x)[0]

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        z, extra = self._latents(x)
        bce = reconstruction_bce(self.decode_logits(z), x)
        total = bce + sum(extra.values())
        return total, {"bce": bce.item(), **{k: v.item() for k, v in extra.items()}}


class BetaVAE(_Decoding):
    """beta-VAE (Higgins et al., 2017) with a diagonal Gaussian posterior and N(0, I) prior.

    ``encode`` returns the posterior mean (the representation); in training mode ``loss``
    decodes a reparametrised sample, in eval mode the mean.
    """

    def __init__(self, latent_dim: int, size: int = 32, *, beta: float = 1.0, width: int = 32):
        super().__init__()
        self.latent_dim = check_number(latent_dim, "latent_dim", who="BetaVAE", low=1, integer=True)
        self.beta = check_number(beta, "beta", who="BetaVAE", low=0)
        self.n_pixels = size * size
        self.encoder = ShapesEncoder(2 * self.latent_dim, size, width=width)
        self.decoder = ShapesDecoder(self.latent_dim, size, width=width)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each (n, latent_dim)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)  # keeps exp() finite early in training

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        mean, logvar = self.posterior(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        bce = reconstruction_bce(self.decode_logits(z), x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()
        total = bce + self.beta * kl / self.n_pixels
        return total, {"bce": bce.item(), "kl": kl.item()}
