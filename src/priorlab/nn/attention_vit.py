"""A small Vision Transformer whose blocks expose their attention matrices.

Built for attention regularisers such as the ``mean log(1 + A^2)`` penalty of "Sparse then Prune:
Toward Efficient Vision Transformers" (Prasetyo et al., arXiv:2307.11988), which need the softmax
maps ``A`` of every block. The layout follows ViT (and the official yogiprsty/Sparse-ViT
``model.py``): non-overlapping patches linearly embedded, a class token, learned position
embeddings, pre-norm blocks ``x + MHSA(LN(x))`` then ``x + MLP(LN(x))`` with GELU, a final
LayerNorm and a linear classifier on the class token. Attention is computed explicitly
(``softmax(q k^T / sqrt(d_head))``) so its probabilities can be returned; no dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


class AttentionBlockMHSA(nn.Module):
    """Multi-head self-attention returning ``(output, attention)``, attention of shape
    (batch, heads, tokens, tokens) with rows summing to 1."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        dim = check_number(dim, "dim", who="AttentionBlockMHSA", low=1, integer=True)
        heads = check_number(heads, "heads", who="AttentionBlockMHSA", low=1, integer=True)
        if dim % heads:
            raise PriorlabError(f"AttentionBlockMHSA: dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attention = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(b, n, d)
        return self.out(mixed), attention


class EncoderBlock(nn.Module):
    """Pre-norm transformer block; ``forward`` returns ``(tokens, attention)``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = AttentionBlockMHSA(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed, attention = self.attn(self.norm1(x))
        x = x + mixed
        return x + self.mlp(self.norm2(x)), attention


class AttentionViT(nn.Module):
    """ViT classifier for (batch, channels, size, size) images.

    ``model(x)`` returns logits; ``model(x, return_attention=True)`` returns
    ``(logits, [A_1, ..., A_depth])``, one (batch, heads, tokens, tokens) map per block in order
    (tokens = 1 + (size / patch)^2).
    """

    def __init__(self, num_classes: int, *, image_size: int = 28, patch_size: int = 7,
                 channels: int = 1, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_dim: int = 128):
        super().__init__()
        who = "AttentionViT"
        num_classes = check_number(num_classes, "num_classes", who=who, low=2, integer=True)
        image_size = check_number(image_size, "image_size", who=who, low=1, integer=True)
        patch_size = check_number(patch_size, "patch_size", who=who, low=1, integer=True)
        self.channels = check_number(channels, "channels", who=who, low=1, integer=True)
        depth = check_number(depth, "depth", who=who, low=1, integer=True)
        mlp_dim = check_number(mlp_dim, "mlp_dim", who=who, low=1, integer=True)
        if image_size % patch_size:
            raise PriorlabError(f"{who}: image_size ({image_size}) must be a multiple of "
                                f"patch_size ({patch_size})")
        self.image_size, self.patch_size = image_size, patch_size
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(channels * patch_size ** 2, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_patches + 1, dim))
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, size, size) -> (batch, n_patches, channels * patch^2), row-major."""
        p = self.patch_size
        check_tensor(x, "x", who="AttentionViT", dtype="float",
                     shape=(None, self.channels, self.image_size, self.image_size))
        b, c = x.shape[:2]
        g = self.image_size // p
        return x.view(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        tokens = self.patch_embed(self.patches(x))
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        attentions = []
        for block in self.blocks:
            tokens, attention = block(tokens)
            attentions.append(attention)
        logits = self.classifier(self.norm(tokens)[:, 0])
        return (logits, attentions) if return_attention else logits
