"""A procedural dSprites-like data set: white 2-D shapes on black, with known discrete factors.

Stands in for dSprites (Matthey et al., 2017), which the disentanglement papers here use (e.g.
QLAE, Hsu et al., NeurIPS 2023, arXiv 2305.18378) but which cannot be downloaded here. Each image
is fully determined by five discrete factors, rendered analytically (2x2 supersampled, so edges
are grey), so any factor combination can be rendered on demand:

=============  =====  ==================================================================
factor         size   values
=============  =====  ==================================================================
shape          3      square, ellipse (axes 1 : 0.55), heart
scale          6      half-extent from 0.1 to 0.22 of ``size``, linearly spaced
orientation    8      0 to 78.75 degrees in steps of 11.25; a quarter turn, so that no two
                      values render the same square
position_x     8      centre from 0.28 to 0.72 of ``size`` (no shape leaves the image)
position_y     8      same
=============  =====  ==================================================================

``procedural_shapes(n, seed=...)`` draws ``n`` factor combinations uniformly (seeded) and renders
them; ``ShapesData.render(factors)`` renders any given combinations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from priorlab.errors import PriorlabError
from priorlab.validation import check_number

FACTOR_NAMES = ("shape", "scale", "orientation", "position_x", "position_y")
FACTOR_SIZES = (3, 6, 8, 8, 8)
SHAPES = ("square", "ellipse", "heart")
_SUPERSAMPLE = 2


def _inside(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the shape-frame point (u, v) (unit half-extent, v pointing up) is inside."""
    square = (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    ellipse = u ** 2 + (v / 0.55) ** 2 <= 1.0
    # the classic implicit heart, (x^2 + y^2 - 1)^3 <= x^2 y^3, shrunk to unit half-extent
    hu, hv = u * 1.2, v * 1.2 + 0.1
    heart = (hu ** 2 + hv ** 2 - 1.0) ** 3 - hu ** 2 * hv ** 3 <= 0.0
    return np.where(shape == 0, square, np.where(shape == 1, ellipse, heart))


def render_shapes(factors, *, size: int = 32) -> torch.Tensor:
    """Render images for factor value indices.

    Args:
        factors: int array/tensor of shape (n, 5), column k an index into factor k's values
            (order of ``FACTOR_NAMES``).
        size: image side in pixels (>= 8).

    Returns:
        float32 tensor of shape (n, 1, size, size) with values in [0, 1].
    """
    size = check_number(size, "size", who="render_shapes", low=8, integer=True)
    f = torch.as_tensor(factors).detach().cpu().numpy() if not isinstance(factors, np.ndarray) else factors
    if f.ndim != 2 or f.shape[1] != len(FACTOR_SIZES):
        raise PriorlabError(f"render_shapes: factors must have shape (n, {len(FACTOR_SIZES)}), "
                            f"got {tuple(f.shape)}")
    if not np.issubdtype(f.dtype, np.integer):
        raise PriorlabError(f"render_shapes: factors must be integer value indices, got {f.dtype}")
    bad = (f < 0) | (f >= np.asarray(FACTOR_SIZES))
    if bad.any():
        col = int(np.argwhere(bad)[0, 1])
        raise PriorlabError(f"render_shapes: factor {FACTOR_NAMES[col]!r} takes indices "
                            f"0..{FACTOR_SIZES[col] - 1}, got {int(f[bad][0])}")
    f = f.astype(np.int64)[:, :, None, None]
    scale = size * (0.1 + 0.12 * f[:, 1] / (FACTOR_SIZES[1] - 1))
    angle = (f[:, 2] * (math.pi / 2) / FACTOR_SIZES[2]).astype(np.float32)
    cx = size * (0.28 + 0.44 * f[:, 3] / (FACTOR_SIZES[3] - 1))
    cy = size * (0.28 + 0.44 * f[:, 4] / (FACTOR_SIZES[4] - 1))
    grid = ((np.arange(size * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE).astype(np.float32)
    x, y = grid[None, None, :], grid[None, :, None]
    dx, dy = (x - cx) / scale, (cy - y) / scale  # dy points up
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    fine = _inside(f[:, 0], u, v).astype(np.float32)
    images = fine.reshape(len(f), size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(2, 4))
    return torch.from_numpy(np.ascontiguousarray(images[:, None]))


@dataclass(frozen=True)
class ShapesData:
    """Images and the factor value indices that generated them."""

    images: torch.Tensor  # float32 (n, 1, size, size) in [0, 1]
    factors: torch.Tensor  # int64 (n, K) value indices
    factor_names: tuple[str, ...] = FACTOR_NAMES
    factor_sizes: tuple[int, ...] = FACTOR_SIZES
    size: int = 32

    def render(self, factors) -> torch.Tensor:
        """Render images (float32, (n, 1, size, size)) for factor value indices (n, K)."""
        return render_shapes(factors, size=self.size)


def procedural_shapes(n: int, *, size: int = 32, seed: int = 0) -> ShapesData:
    """``n`` images with factors drawn uniformly and independently (seeded: same seed, same data)."""
    n = check_number(n, "n", who="procedural_shapes", low=1, integer=True)
    seed = check_number(seed, "seed", who="procedural_shapes", low=0, integer=True)
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(0, k, size=n) for k in FACTOR_SIZES], axis=1)
    images = render_shapes(factors, size=size)
    return ShapesData(images=images, factors=torch.from_numpy(factors.astype(np.int64)), size=size)
