"""Coordinates for fields over images: pixel-centre grids, sampling an image at coordinates,
and the scikit-image photos that ship offline.

Convention (LIIF's, Chen et al. 2021, arXiv:2012.09161): a coordinate is (row, col) in (-1, 1)
and pixel ``i`` of ``n`` sits at its centre, ``-1 + (2 i + 1) / n``; so a grid of any size covers
the same square, and a field can be rendered at any resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor

# scikit-image photos that load without a download (the others in skimage.data fetch files)
PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins",
          "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page",
          "retina", "rocket", "text")


def grid_coords(height: int, width: int) -> torch.Tensor:
    """Pixel-centre coordinates of a ``height x width`` grid, shape ``(height * width, 2)``,
    (row, col) in (-1, 1), row-major (the order of ``image.flatten()``)."""
    height = check_number(height, "height", who="grid_coords", low=1, integer=True)
    width = check_number(width, "width", who="grid_coords", low=1, integer=True)
    rows = -1 + (2 * torch.arange(height) + 1) / height
    cols = -1 + (2 * torch.arange(width) + 1) / width
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def sample_image(images: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Values of ``images`` (B, C, H, W) at ``coords`` (B, N, 2) in the (row, col) convention,
    shape (B, N, C). ``mode`` is ``"bilinear"``, ``"nearest"`` or ``"bicubic"``; outside the
    image the border value is used."""
    check_tensor(images, "images", who="sample_image", ndim=4, dtype="float", non_empty=True)
    check_tensor(coords, "coords", who="sample_image", shape=(images.shape[0], None, 2),
                 dtype="float")
    if mode not in ("bilinear", "nearest", "bicubic"):
        raise did_you_mean(mode, ("bilinear", "nearest", "bicubic"), "sampling mode")
    # grid_sample wants (x, y) = (col, row)
    grid = coords.flip(-1).unsqueeze(1).to(images.dtype)
    values = F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)
    return values[:, :, 0, :].transpose(1, 2)


def image_to_field(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(coords, values)`` of one image (C, H, W): ``(H*W, 2)`` and ``(H*W, C)``, for fitting."""
    check_tensor(image, "image", who="image_to_field", ndim=3, dtype="float", non_empty=True)
    channels, height, width = image.shape
    return grid_coords(height, width), image.reshape(channels, -1).T


def load_photo(name: str = "camera", size: int = 64, grey: bool = True) -> torch.Tensor:
    """A scikit-image photo as a float tensor in [0, 1], shape (1 or 3, size, size): the
    central square crop, resized with antialiasing. Needs ``scikit-image`` (extra ``images``)."""
    if name not in PHOTOS:
        raise did_you_mean(name, PHOTOS, "offline photo")
    size = check_number(size, "size", who="load_photo", low=2, integer=True)
    try:
        from skimage import data
    except ImportError:
        raise PriorlabError("load_photo needs scikit-image: pip install 'priorlab[images]'") from None
    array = getattr(data, name)()
    image = torch.as_tensor(array, dtype=torch.float64) / (255.0 if array.dtype.kind == "u" else 1.0)
    image = image.unsqueeze(0) if image.ndim == 2 else image[..., :3].permute(2, 0, 1)
    if grey and image.shape[0] == 3:
        image = (torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype)[:, None, None] * image).sum(0,
                                                                                                  keepdim=True)
    side = min(image.shape[-2:])
    top, left = (image.shape[-2] - side) // 2, (image.shape[-1] - side) // 2
    image = image[:, top:top + side, left:left + side]
    image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)[0]
    return image.clamp(0, 1).float()
