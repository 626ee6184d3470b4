"""A small VQ-VAE image tokenizer for grey digits, shared by papers 15 (GigaTok) and 50 (RobustTok).

A 16x16 image becomes 16 discrete tokens on a 4x4 grid (van den Oord et al., "Neural Discrete
Representation Learning", arXiv 1711.00937): a conv encoder gives ``code_dim``-d latents, each is
replaced by its nearest codebook entry with the straight-through gradient, and a conv decoder
maps the codes back to pixels. As in LlamaGen / GigaTok's VQ tokenizers, latents and codes are
l2-normalised (cosine nearest-neighbour; low-dimensional codes keep the codebook in use). Loss:
``MSE(x, x_hat) + |sg(z) - e|^2 + commitment |z - sg(e)|^2`` (commitment 0.25), plus optional
regularisers from :mod:`priorlab.functional.tokenizer_regularisers` (GigaTok's semantic
alignment and entropy loss, RobustTok's latent perturbation). No adversarial or perceptual loss.

``width`` sets the tokenizer's size (:data:`SIZES` names three); the decoder exposes the feature
map after its 4x4 stem (``decode_latents(..., with_features=True)``), the intermediate decoder
feature that GigaTok regularises. :func:`pretrained_tokenizer` trains one per configuration and
caches it under :func:`priorlab.generative.gan.cache_dir`.
"""

from __future__ import annotations

import hashlib
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.functional.tokenizer_regularisers import (
    SemanticRegulariser,
    codebook_entropy_loss,
    latent_perturbation,
    perturbation_ratio,
)
from priorlab.generative.evaluate import pretrained_classifier
from priorlab.generative.gan import _atomic_save, cache_dir, digit_images
from priorlab.validation import check_number, check_tensor

SIZES = {"small": 8, "base": 16, "large": 32}  # channel width of encoder and decoder


def tokenizer_width(size: str | int) -> int:
    """A width from a size name in :data:`SIZES` or a positive integer."""
    if isinstance(size, str):
        if size not in SIZES:
            raise did_you_mean(size, SIZES, "tokenizer size")
        return SIZES[size]
    return check_number(size, "size", who="tokenizer_width", low=1, integer=True)


class VQTokenizer(nn.Module):
    """16x16 grey images <-> 4x4 grids of ids into a ``codebook_size`` x ``code_dim`` codebook."""

    def __init__(self, width: int = 32, codebook_size: int = 64, code_dim: int = 8,
                 image_size: int = 16):
        super().__init__()
        who = "VQTokenizer"
        c = self.width = check_number(width, "width", who=who, low=1, integer=True)
        self.codebook_size = check_number(codebook_size, "codebook_size", who=who, low=2, integer=True)
        self.code_dim = check_number(code_dim, "code_dim", who=who, low=1, integer=True)
        if image_size != 16:
            raise PriorlabError(f"{who}: image_size must be 16 (a 4x4 token grid), got {image_size}")
        self.image_size, self.grid = 16, 4
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * c, self.code_dim, 1))
        self.codebook = nn.Parameter(torch.randn(self.codebook_size, self.code_dim))
        self.decoder_stem = nn.Sequential(
            nn.Conv2d(self.code_dim, 2 * c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.SiLU())
        self.decoder_head = nn.Sequential(
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(c, c, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(c, 1, 3, padding=1), nn.Sigmoid())

    @property
    def feature_channels(self) -> int:
        """Channels of the intermediate decoder feature (after the 4x4 stem)."""
        return 2 * self.width

    def codes(self) -> torch.Tensor:
        """The l2-normalised codebook, (K, D)."""
        return F.normalize(self.codebook, dim=1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous, l2-normalised latents (N, D, 4, 4)."""
        check_tensor(images, "images", who="VQTokenizer", shape=(None, 1, 16, 16), dtype="float",
                     finite=True)
        return F.normalize(self.encoder(images), dim=1)

    def distances(self, latents: torch.Tensor) -> torch.Tensor:
        """Squared distances (N*16, K) of each latent to each code (raster order per image)."""
        flat = latents.permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        return torch.cdist(flat, self.codes()).pow(2)

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codes (N, D, 4, 4) of (N, 16) token ids in raster order."""
        check_tensor(tokens, "tokens", who="VQTokenizer", shape=(None, self.grid ** 2), dtype="integer")
        if tokens.min() < 0 or tokens.max() >= self.codebook_size:
            raise PriorlabError(f"VQTokenizer: token ids must lie in [0, {self.codebook_size})")
        n = len(tokens)
        return self.codes()[tokens].reshape(n, self.grid, self.grid, -1).permute(0, 3, 1, 2)

    def decode_latents(self, quantised: torch.Tensor, *, with_features: bool = False):
        features = self.decoder_stem(quantised)
        images = self.decoder_head(features)
        return (images, features) if with_features else images

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, 16, 16) images in [0, 1] -> (N, 16) token ids, raster order."""
        with torch.no_grad():
            return self.distances(self.encode(images)).argmin(1).reshape(len(images), -1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, 16) token ids -> (N, 1, 16, 16) images in [0, 1]."""
        with torch.no_grad():
            return self.decode_latents(self.lookup(tokens))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the quantiser (straight-through)."""
        latents = self.encode(images)
        codes = self.lookup(self.distances(latents).argmin(1).reshape(len(images), -1))
        return self.decode_latents(latents + (codes - latents).detach())


def vq_loss(tokenizer: VQTokenizer, images: torch.Tensor, *, commitment: float = 0.25,
            entropy_weight: float = 0.0, semantic: SemanticRegulariser | None = None,
            semantic_weight: float = 0.0, perturbation: dict | None = None,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """The tokenizer's training loss on a batch and its parts (floats, for logging).

    ``perturbation`` (RobustTok): keyword arguments of
    :func:`~priorlab.functional.tokenizer_regularisers.latent_perturbation` (alpha, beta, delta);
    the decoder then sees the perturbed codes. ``semantic`` with ``semantic_weight`` (GigaTok)
    aligns the decoder's intermediate features with the frozen model's features of ``images``.
    """
    latents = tokenizer.encode(images)
    distances = tokenizer.distances(latents)
    nearest = tokenizer.lookup(distances.argmin(1).reshape(len(images), -1))
    codebook_term = (nearest - latents.detach()).pow(2).sum(1).mean()
    commit_term = (latents - nearest.detach()).pow(2).sum(1).mean()
    if perturbation:
        quantised = latent_perturbation(latents, tokenizer.codes(), generator=generator, **perturbation)
    else:
        quantised = latents + (nearest - latents).detach()
    recon, features = tokenizer.decode_latents(quantised, with_features=True)
    recon_term = F.mse_loss(recon, images)
    loss = recon_term + codebook_term + commitment * commit_term
    parts = {"recon": recon_term.item(), "codebook": codebook_term.item(), "commit": commit_term.item()}
    if entropy_weight > 0:
        entropy = codebook_entropy_loss(distances)
        loss = loss + entropy_weight * entropy
        parts["entropy"] = entropy.item()
    if semantic is not None and semantic_weight > 0:
        align = semantic(features, images)
        loss = loss + semantic_weight * align
        parts["semantic"] = align.item()
    return loss, parts


def train_tokenizer(tokenizer: VQTokenizer, images: torch.Tensor, *, steps: int, batch_size: int = 64,
                    lr: float = 2e-3, seed: int = 0, semantic: SemanticRegulariser | None = None,
                    perturbation: dict | None = None, **loss_kwargs) -> dict[str, list[float]]:
    """Adam (cosine-decayed lr) on :func:`vq_loss` over random batches; the projector of
    ``semantic`` trains with the tokenizer; ``perturbation``'s alpha and delta are annealed by
    :func:`~priorlab.functional.tokenizer_regularisers.perturbation_ratio` as in RobustTok.
    Returns the loss parts per step."""
    check_tensor(images, "images", who="train_tokenizer", shape=(None, 1, 16, 16), dtype="float",
                 non_empty=True, finite=True)
    steps = check_number(steps, "steps", who="train_tokenizer", low=1, integer=True)
    params = list(tokenizer.parameters())
    if semantic is not None:
        params += list(semantic.projector.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {}
    tokenizer.train()
    usage = torch.ones(tokenizer.codebook_size)
    for step in range(steps):
        batch = images[torch.randint(len(images), (batch_size,), generator=rng)]
        usage = _restart_dead_codes(tokenizer, batch, usage, step, rng)
        annealed = None
        if perturbation:
            ratio = perturbation_ratio(step / steps)
            annealed = {**perturbation, "alpha": ratio * perturbation.get("alpha", 1.0),
                        "delta": max(1, int(ratio * perturbation["delta"]))}
        loss, parts = vq_loss(tokenizer, batch, semantic=semantic, perturbation=annealed,
                              generator=rng, **loss_kwargs)
        if not torch.isfinite(loss):
            raise PriorlabError(f"train_tokenizer: non-finite loss at step {step}: {parts}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        for key, value in parts.items():
            history.setdefault(key, []).append(value)
    return history


def _restart_dead_codes(tokenizer: VQTokenizer, batch: torch.Tensor, usage: torch.Tensor, step: int,
                        rng: torch.Generator, every: int = 25) -> torch.Tensor:
    """Keep the codebook in use (the usual dead-code restart; every arm alike): every ``every``
    steps, each code whose share of recent tokens (an EMA, decay 0.9, started high so that no
    code is reset in the first ~50 steps) is under a tenth of the fair share 1/K is reset to a
    random latent of the current batch."""
    with torch.no_grad():
        latents = tokenizer.encode(batch)
        counts = torch.bincount(tokenizer.distances(latents).argmin(1),
                                minlength=tokenizer.codebook_size).float()
        usage = 0.9 * usage + 0.1 * counts / counts.sum()
        if step == 0 or step % every:
            return usage
        dead = usage < 0.1 / tokenizer.codebook_size
        if dead.any():
            picks = torch.randint(len(batch) * tokenizer.grid ** 2, (int(dead.sum()),), generator=rng)
            flat = latents.permute(0, 2, 3, 1).reshape(-1, tokenizer.code_dim)
            tokenizer.codebook[dead] = flat[picks]
            usage[dead] = 1.0 / tokenizer.codebook_size
    return usage


def classifier_feature_map(classifier: nn.Module) -> tuple[nn.Module, int]:
    """The frozen feature model for GigaTok's regulariser: a
    :class:`~priorlab.generative.evaluate.DigitClassifier`'s conv trunk up to its 4x4 map, and
    its channel count (it stands in for DINOv2's patch features)."""
    trunk = classifier.body[:6]
    return trunk, trunk[3].out_channels


def pretrained_tokenizer(*, size: str | int = "base", codebook_size: int = 64, code_dim: int = 8,
                         steps: int = 1500, batch_size: int = 64, lr: float = 2e-3,
                         entropy_weight: float = 0.0, semantic_weight: float = 0.0,
                         teacher_seed: int = 1, teacher_epochs: int = 15, perturbation: dict | None = None,
                         dataset: str = "digits", seed: int = 0,
                         cache: bool = True) -> tuple[VQTokenizer, dict]:
    """A tokenizer trained on ``dataset``'s training split (16x16), cached per configuration.

    ``semantic_weight > 0`` trains with GigaTok's regulariser against the cached digits
    classifier trained with ``teacher_seed`` (keep it different from the evaluation classifier's
    seed, so the tokens are not fitted to the judge's own features).
    """
    width = tokenizer_width(size)
    config = {"width": width, "codebook_size": codebook_size, "code_dim": code_dim, "steps": steps,
              "batch_size": batch_size, "lr": lr, "entropy_weight": entropy_weight,
              "semantic_weight": semantic_weight,
              "teacher": [teacher_seed, teacher_epochs] if semantic_weight else None,
              "perturbation": perturbation or None, "dataset": dataset, "seed": seed, "v": 3}
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "tokenizer" / f"vq_{key}.pt"
    if cache and path.exists():
        state = torch.load(path, weights_only=True)
        tokenizer = VQTokenizer(width, codebook_size, code_dim)
        tokenizer.load_state_dict(state["model"])
        return tokenizer.eval(), json.loads(state["info"])
    torch.manual_seed(seed)
    tokenizer = VQTokenizer(width, codebook_size, code_dim)
    semantic = None
    if semantic_weight > 0:
        teacher, channels = classifier_feature_map(
            pretrained_classifier(dataset=dataset, image_size=16, epochs=teacher_epochs,
                                  seed=teacher_seed)[0])
        semantic = SemanticRegulariser(tokenizer.feature_channels, teacher, channels)
    images, _ = digit_images(16, "train", dataset=dataset)
    start = time.perf_counter()
    history = train_tokenizer(tokenizer, images, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                              semantic=semantic, entropy_weight=entropy_weight,
                              semantic_weight=semantic_weight, perturbation=perturbation)
    tail = max(1, steps // 10)
    info = {**config, "train_seconds": time.perf_counter() - start,
            **{f"final_{k}": sum(v[-tail:]) / tail for k, v in history.items()}}
    if cache:
        _atomic_save({"model": tokenizer.state_dict(), "info": json.dumps(info)}, path)
    return tokenizer.eval(), info
