"""Metrics for fields: PSNR and SSIM for images, IoU and boundary F-score for masks, Chamfer
distance for point sets. Each returns a Python float (a mean over the batch where there is one)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def _pair(pred, target, who: str, dtype: str = "float") -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor(pred, "pred", who=who, dtype=dtype, non_empty=True, finite=dtype == "float")
    check_tensor(target, "target", who=who, shape=tuple(pred.shape), dtype=dtype,
                 finite=dtype == "float", hint="pred and target must have the same shape")
    return pred, target


def _as_batch(x: torch.Tensor, who: str) -> torch.Tensor:
    """(H, W) | (C, H, W) | (B, C, H, W) -> (B, C, H, W)."""
    if x.ndim not in (2, 3, 4):
        raise PriorlabError(f"{who}: images must be (H, W), (C, H, W) or (B, C, H, W), "
                            f"got shape {tuple(x.shape)}")
    return x.reshape((1,) * (4 - x.ndim) + tuple(x.shape))


def psnr(pred: torch.Tensor, target: torch.Tensor, peak: float = 1.0,
         mask: torch.Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / MSE)`` per image, averaged over the
    batch; ``inf`` for a perfect image. ``mask`` (one channel or one per channel, 1 where a pixel
    counts) restricts the MSE to those pixels, e.g. the hole of an inpainting; every image needs
    at least one."""
    pred, target = _pair(pred, target, "psnr")
    peak = check_number(peak, "peak", who="psnr", low=0.0, low_open=True)
    pred, target = _as_batch(pred, "psnr").double(), _as_batch(target, "psnr").double()
    if mask is None:
        mse = ((pred - target) ** 2).flatten(1).mean(1)
    else:
        check_tensor(mask, "mask", who="psnr", ndim=(2, 3, 4))
        weight = _as_batch(mask, "psnr").double()
        if weight.shape[0] != target.shape[0] or weight.shape[1] not in (1, target.shape[1]) \
                or weight.shape[2:] != target.shape[2:]:
            raise PriorlabError(f"psnr: mask must have one channel or as many as the images "
                                f"{tuple(target.shape)}, got shape {tuple(mask.shape)}")
        weight = weight.expand_as(target)
        count = weight.flatten(1).sum(1)
        if (count == 0).any():
            raise PriorlabError("psnr: every image needs at least one masked pixel")
        mse = (((pred - target) ** 2) * weight).flatten(1).sum(1) / count
    return float((10 * torch.log10(peak ** 2 / mse)).mean())


def ssim(pred: torch.Tensor, target: torch.Tensor, peak: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5),
    K1 = 0.01, K2 = 0.03, over valid windows, averaged over channels and the batch. Images
    smaller than 11 pixels use the largest odd window that fits."""
    pred, target = _pair(pred, target, "ssim")
    peak = check_number(peak, "peak", who="ssim", low=0.0, low_open=True)
    x, y = _as_batch(pred, "ssim").double(), _as_batch(target, "ssim").double()
    size = min(11, x.shape[-2] - (x.shape[-2] + 1) % 2, x.shape[-1] - (x.shape[-1] + 1) % 2)
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-offsets ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    channels = x.shape[1]
    window = (g[:, None] * g[None, :]).expand(channels, 1, size, size)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, window, groups=channels)

    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(index.mean())


def iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Intersection over union of two boolean masks (or occupancies) of the same shape; 1.0 when
    both are empty."""
    pred, target = _pair(pred, target, "iou", dtype="bool")
    union = (pred | target).sum()
    return 1.0 if union == 0 else float((pred & target).sum() / union)


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of ``mask`` (B, 1, H, W bool) with a 4-neighbour outside it (image border counts as inside)."""
    m = mask.float()
    cross = F.pad(m, (1, 1, 1, 1), value=1.0)
    eroded = torch.minimum(torch.minimum(cross[..., :-2, 1:-1], cross[..., 2:, 1:-1]),
                           torch.minimum(cross[..., 1:-1, :-2], cross[..., 1:-1, 2:]))
    return mask & (eroded < 0.5)


def _dilate(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius ** 2 + 1e-9).float()
    return F.conv2d(boundary.float(), disk[None, None], padding=radius) > 0


def boundary_fscore(pred: torch.Tensor, target: torch.Tensor, tolerance: int = 2) -> float:
    """Boundary F-score of binary masks (Perazzi et al., DAVIS 2016): a predicted boundary pixel is
    correct if a true boundary pixel lies within ``tolerance`` pixels (a disk), and vice versa;
    F = 2PR / (P + R), averaged over the batch. Masks are (H, W), (1, H, W) or (B, 1, H, W) bool.
    Two masks without boundary score 1; one without scores 0."""
    pred, target = _pair(pred, target, "boundary_fscore", dtype="bool")
    tolerance = check_number(tolerance, "tolerance", who="boundary_fscore", low=0, integer=True)
    p, t = _as_batch(pred, "boundary_fscore"), _as_batch(target, "boundary_fscore")
    if p.shape[1] != 1:
        raise PriorlabError(f"boundary_fscore: masks must have one channel, got shape {tuple(pred.shape)}")
    bp, bt = _boundary(p), _boundary(t)
    scores = []
    for one_p, one_t in zip(bp, bt):
        n_p, n_t = int(one_p.sum()), int(one_t.sum())
        if n_p == 0 or n_t == 0:
            scores.append(1.0 if n_p == n_t else 0.0)
            continue
        precision = float((one_p & _dilate(one_t[None], tolerance)[0]).sum()) / n_p
        recall = float((one_t & _dilate(one_p[None], tolerance)[0]).sum()) / n_t
        scores.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return sum(scores) / len(scores)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, squared: bool = False,
                     chunk: int = 4096) -> float:
    """Symmetric Chamfer distance between point sets ``a`` (N, D) and ``b`` (M, D):
    ``mean_a min_b d + mean_b min_a d`` with ``d`` the Euclidean distance (``squared=True``: its
    square, DeepSDF's convention). Exact nearest neighbours, ``chunk`` rows at a time."""
    who = "chamfer_distance"
    check_tensor(a, "a", who=who, ndim=2, dtype="float", non_empty=True, finite=True)
    check_tensor(b, "b", who=who, shape=(None, a.shape[1]), dtype="float", non_empty=True, finite=True,
                 hint="both point sets need the same number of coordinates and at least one point")
    chunk = check_number(chunk, "chunk", who=who, low=1, integer=True)
    a, b = a.double(), b.double()

    def nearest(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.cdist(src[i:i + chunk], dst).min(1).values
                          for i in range(0, len(src), chunk)])

    da, db = nearest(a, b), nearest(b, a)
    if squared:
        da, db = da ** 2, db ** 2
    value = float(da.mean() + db.mean())
    return value if math.isfinite(value) else math.inf
