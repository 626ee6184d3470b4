"""A local implicit image function: decode a feature map at any coordinate, hence any scale.

Chen, Liu & Wang, "Learning Continuous Image Representation with Local Implicit Image
Function", CVPR 2021, arXiv:2012.09161 (official code: yinboc/liif, ``models/liif.py``). For a
query coordinate ``x`` and each of the (up to) four latent codes ``z_t`` around it,

    pred_t = MLP([z_t, (x - v_t) * (h, w), cell * (h, w)])

with ``v_t`` the code's own coordinate and ``cell`` the query pixel's size; the output is the
average of ``pred_t`` weighted by the area of the rectangle between ``x`` and the diagonally
opposite code (the local ensemble). Feature unfolding concatenates each code's 3x3 neighbourhood.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.fields.coords import grid_coords
from priorlab.fields.networks import mlp
from priorlab.validation import check_number, check_tensor

_EPS_SHIFT = 1e-6  # LIIF's nudge so a query on a cell border picks a definite neighbour


class LocalImplicitDecoder(nn.Module):
    """LIIF's decoder: ``forward(features (B,C,h,w), coords (B,N,2), cell (B,N,2)) -> (B,N,out)``.

    Coordinates follow :mod:`priorlab.fields.coords` ((row, col) in (-1, 1)); ``cell`` is the
    query pixel's size in those units (``2 / H``, ``2 / W`` for an ``H x W`` output). The flags
    are LIIF's ablations (all on in the paper); ``hidden`` defaults to its 4 x 256 MLP.
    """

    def __init__(self, feat_dim: int, out_dim: int, hidden: int | list[int] = 256, depth: int = 4,
                 feat_unfold: bool = True, local_ensemble: bool = True, cell_decode: bool = True):
        super().__init__()
        who = "LocalImplicitDecoder"
        self.feat_dim = check_number(feat_dim, "feat_dim", who=who, low=1, integer=True)
        self.out_dim = check_number(out_dim, "out_dim", who=who, low=1, integer=True)
        self.feat_unfold, self.local_ensemble, self.cell_decode = feat_unfold, local_ensemble, cell_decode
        in_dim = self.feat_dim * (9 if feat_unfold else 1) + 2 + (2 if cell_decode else 0)
        self.net = mlp(in_dim, self.out_dim, hidden, depth)

    def forward(self, features: torch.Tensor, coords: torch.Tensor,
                cell: torch.Tensor | None = None) -> torch.Tensor:
        who = "LocalImplicitDecoder"
        check_tensor(features, "features", who=who, shape=(None, self.feat_dim, None, None),
                     dtype="float", non_empty=True)
        batch, _, height, width = features.shape
        check_tensor(coords, "coords", who=who, shape=(batch, None, 2), dtype="float")
        if self.cell_decode:
            check_tensor(cell, "cell", who=who, shape=coords.shape, dtype="float",
                         hint="pass the query pixel size, e.g. fields.query_cell(coords, H, W)")
        if self.feat_unfold:
            features = F.unfold(features, 3, padding=1).view(batch, -1, height, width)
        # each code's own coordinate, sampled the same way as the codes
        code_coords = grid_coords(height, width).to(features).T.reshape(1, 2, height, width)
        code_coords = code_coords.expand(batch, 2, height, width)
        shifts = [(-1, -1), (-1, 1), (1, -1), (1, 1)] if self.local_ensemble else [(0, 0)]
        half_row, half_col = 1.0 / height, 1.0 / width
        scale = torch.tensor([height, width], dtype=features.dtype, device=features.device)
        preds, areas = [], []
        for d_row, d_col in shifts:
            shifted = coords.clone()
            shifted[..., 0] += d_row * half_row + _EPS_SHIFT
            shifted[..., 1] += d_col * half_col + _EPS_SHIFT
            grid = shifted.clamp(-1 + 1e-6, 1 - 1e-6).flip(-1).unsqueeze(1)
            code = F.grid_sample(features, grid, mode="nearest", align_corners=False)[:, :, 0].transpose(1, 2)
            where = F.grid_sample(code_coords, grid, mode="nearest", align_corners=False)[:, :, 0]
            relative = (coords - where.transpose(1, 2)) * scale
            inputs = [code, relative] + ([cell * scale] if self.cell_decode else [])
            preds.append(self.net(torch.cat(inputs, dim=-1)))
            areas.append((relative[..., 0] * relative[..., 1]).abs() + 1e-9)
        if not self.local_ensemble:
            return preds[0]
        total = sum(areas)
        # each prediction is weighted by the area opposite to it
        areas = areas[::-1]
        return sum(p * (a / total).unsqueeze(-1) for p, a in zip(preds, areas))


def query_cell(coords: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The cell of every query when rendering an ``height x width`` image: ``(2/H, 2/W)``."""
    cell = torch.tensor([2.0 / height, 2.0 / width], dtype=coords.dtype, device=coords.device)
    return cell.expand_as(coords).clone()


def render(decoder: LocalImplicitDecoder, features: torch.Tensor, height: int, width: int,
           chunk: int = 16384) -> torch.Tensor:
    """Decode ``features`` (B,C,h,w) to images (B, out, height, width), ``chunk`` queries at a time."""
    height = check_number(height, "height", who="render", low=1, integer=True)
    width = check_number(width, "width", who="render", low=1, integer=True)
    chunk = check_number(chunk, "chunk", who="render", low=1, integer=True)
    coords = grid_coords(height, width).to(features).unsqueeze(0).expand(features.shape[0], -1, -1)
    cell = query_cell(coords, height, width)
    parts = [decoder(features, coords[:, i:i + chunk], cell[:, i:i + chunk])
             for i in range(0, coords.shape[1], chunk)]
    out = torch.cat(parts, dim=1)
    return out.transpose(1, 2).reshape(features.shape[0], -1, height, width)
