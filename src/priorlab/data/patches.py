"""Whitened natural-image patches from photos that ship offline.

Photos: scikit-learn's two sample images (``china``, ``flower``) and scikit-image's bundled
photographs (``camera``, ``astronaut``, ``coffee``, ``chelsea``, ``rocket``, ``grass``,
``gravel``, ``brick``); none needs a download. Each photo is turned to grey, scaled to unit
variance and whitened as Olshausen & Field (Nature 1996) did: its Fourier transform is
multiplied by R(f) = |f| exp(-(|f| / f0)^4), which flattens the ~1/f amplitude spectrum of
natural images and cuts the corners of the spectrum, f0 = 0.4 cycles/pixel (their 200
cycles/picture on 512-pixel images). Each whitened image is rescaled to unit variance.

Splits are by image rows so patches never overlap across splits: the top 60% of every image
feeds ``train``, the next 20% ``val``, the last 20% ``test``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from priorlab.errors import did_you_mean
from priorlab.validation import check_number

SKIMAGE_PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "grass", "gravel",
                  "brick")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
SPLITS = ("train", "val", "test")
_ROW_FRACTIONS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    return image


@lru_cache(maxsize=1)
def load_photos() -> tuple[np.ndarray, ...]:
    """The grey photos (float64, unit variance), sklearn's first."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    by_name = dict(zip([name.rsplit("/", 1)[-1] for name in sample.filenames], sample.images))
    photos = [_grey(by_name[name]) for name in SKLEARN_PHOTOS]
    photos += [_grey(getattr(data, name)()) for name in SKIMAGE_PHOTOS]
    return tuple((p - p.mean()) / p.std() for p in photos)


def whiten(image: np.ndarray, cutoff: float = 0.4) -> np.ndarray:
    """Olshausen-Field whitening: multiply the spectrum by |f| exp(-(|f| / cutoff)^4) (f in
    cycles/pixel), back to space, rescale to unit variance."""
    cutoff = check_number(cutoff, "cutoff", who="whiten", low=0.0, low_open=True)
    rows, cols = image.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(rows), np.fft.fftfreq(cols), indexing="ij")
    radius = np.hypot(fy, fx)
    filtered = np.real(np.fft.ifft2(np.fft.fft2(image - image.mean())
                                    * radius * np.exp(-(radius / cutoff) ** 4)))
    return filtered / filtered.std()


@lru_cache(maxsize=2)
def _whitened(cutoff: float) -> tuple[np.ndarray, ...]:
    return tuple(whiten(p, cutoff) for p in load_photos())


@dataclass
class Patches:
    """Flattened square patches (n, size * size), float32, and the patch side."""

    x: torch.Tensor
    size: int


def sample_patches(split: str, n: int, size: int = 8, seed: int = 0,
                   cutoff: float = 0.4) -> Patches:
    """``n`` random ``size`` x ``size`` whitened patches from ``split``'s rows of every photo,
    photos drawn uniformly."""
    if split not in SPLITS:
        raise did_you_mean(split, SPLITS, "split")
    n = check_number(n, "n", who="sample_patches", low=1, integer=True)
    size = check_number(size, "size", who="sample_patches", low=2, high=32, integer=True)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    images = _whitened(float(cutoff))
    low, high = _ROW_FRACTIONS[split]
    which = rng.integers(len(images), size=n)
    out = np.empty((n, size * size), dtype=np.float32)
    for k, i in enumerate(which):
        image = images[i]
        top = int(low * image.shape[0])
        bottom = int(high * image.shape[0]) - size
        r = rng.integers(top, bottom + 1)
        c = rng.integers(0, image.shape[1] - size + 1)
        out[k] = image[r:r + size, c:c + size].ravel()
    return Patches(x=torch.from_numpy(out), size=size)
