"""Paper card: Sparse then Prune (seed 55).

Components: :func:`priorlab.functional.attention_sparsity.sparse_regularised_loss` (the training
loss; the penalty itself is ``attention_sparsity_loss``), :func:`global_magnitude_prune` (the
pruning step) and the attention-exposing :class:`priorlab.nn.attention_vit.AttentionViT`.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.functional.attention_sparsity import (attention_log_penalty, attention_sparsity_loss,
                                                    global_magnitude_masks, global_magnitude_prune,
                                                    sparse_regularised_loss)
from priorlab.nn.attention_vit import AttentionViT
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Sparse then Prune: Toward Efficient Vision Transformers",
    authors="Yogi Prasetyo, Novanto Yudistira, Agus Wahyu Widodo",
    venue="arXiv",
    year=2023,
    arxiv="2307.11988",
    code_url="https://github.com/yogiprsty/Sparse-ViT",
    licence="no licence file in the official repository",
    seed_id=55,
)

USAGE = """\
import torch
from priorlab.functional.attention_sparsity import global_magnitude_prune, sparse_regularised_loss
from priorlab.nn.attention_vit import AttentionViT

torch.manual_seed(0)
model = AttentionViT(10, image_size=28, patch_size=7, dim=32, depth=2, heads=2, mlp_dim=64)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
for step in range(5):
    logits, attentions = model(x, return_attention=True)  # one (B, heads, T, T) map per block
    # CE + 0.01 * mean log(1 + A^2) on the last block's attention (the official code)
    loss = sparse_regularised_loss(logits, y, attentions, strength=0.01, blocks="last")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# then prune 50% of all Linear/Conv2d/LayerNorm weights by global magnitude (no fine-tuning)
zeroed = global_magnitude_prune(model, 0.5)
"""


class _LogitsAndAttention(nn.Module):
    """Wraps an AttentionViT so that ``forward`` returns ``(logits, attentions)`` for a plain loop."""

    def __init__(self, vit: AttentionViT):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return self.vit(x, return_attention=True)


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return _LogitsAndAttention(AttentionViT(3, image_size=4, patch_size=2, dim=8, depth=2, heads=2,
                                            mlp_dim=16))


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 4, 4, generator=generator), torch.randint(0, 3, (12,), generator=generator)


def _loss(strength: float):
    return lambda out, y: sparse_regularised_loss(out[0], y, out[1], strength=strength)


def _example() -> Example:
    adam = lambda params: torch.optim.AdamW(params, lr=1e-2)  # noqa: E731
    return Example(
        model_fn=_tiny_model,
        batch=_tiny_batch(),
        loss_fn=_loss(0.01),
        optimizer_fn=adam,
        adapter_fn=None,
        zero_strength=(adam, None, _loss(0.0)),
        baseline=(adam, None, lambda out, y: nn.functional.cross_entropy(out[0], y)),
        bad_args=(
            lambda: sparse_regularised_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                                            [torch.full((2, 1, 3, 3), 1 / 3)], strength=-0.1),
            lambda: attention_sparsity_loss([torch.full((1, 1, 2, 2), 0.5)], blocks="lats"),
            lambda: attention_sparsity_loss([]),
            lambda: attention_log_penalty(torch.full((1, 2, 2), 2.0)),
            lambda: attention_log_penalty(torch.tensor([[float("nan"), 1.0]])),
            lambda: global_magnitude_masks([torch.ones(3)], 1.0),
            lambda: global_magnitude_prune(nn.Sequential(nn.ReLU()), 0.5),
            lambda: AttentionViT(10, image_size=28, patch_size=5),
            lambda: AttentionViT(10, dim=30, heads=4),
        ),
    )


CARD = register(MethodCard(
    id="sparse-vit",
    name="Sparse then Prune (attention sparse regularisation + global magnitude pruning)",
    family="S: sparsity, compression, language models",
    kind="function",
    paper=PAPER,
    summary=("Train a ViT with CE + lambda * mean log(1 + A^2) over its softmax attention maps A "
             "(lambda = 0.01), then prune the globally smallest-magnitude weights of every "
             "Linear/Conv/LayerNorm layer and use the model without fine-tuning."),
    usage=USAGE,
    hyperparameters=(
        "strength (lambda): 0.01 (official train.py). blocks: 'last' regularises only the last "
        "block's attention, as the official encoder loop does (it keeps only the last block's "
        "value); 'all' averages the penalty over blocks. Reduction: the mean over batch, heads, "
        "queries and keys (official). Pruning: sparsity = fraction of all pooled weights of "
        "Linear, Conv2d and LayerNorm modules (official prune.py list: patch embedding, q/k/v/out, "
        "MLP, LayerNorms, classifier; biases are never pruned). The official main.py prunes 10%; "
        "the paper's ratios could not be retrieved."),
    deviations=(
        "Official: ImageNet-21k-pretrained ViT-B/16 at 384 px fine-tuned with SGD (momentum 0.9, "
        "lr 1e-3, wd 1e-4, one-cycle), dropout 0.1. Here: a small ViT from scratch (AdamW, "
        "one-cycle, no dropout) on 28x28 images, patch embedding a Linear on flattened patches "
        "(equivalent to the official stride-p Conv2d). global_magnitude_prune also includes the "
        "encoder's final LayerNorm weight, which the official hand-written list leaves out "
        "(LayerNorm weights are near 1 and are almost never pruned). Ties in |w| go to the "
        "earlier weight (torch.topk's order is unspecified)."),
    claim_scope=(
        "The paper claims (abstract) that the penalty raises dense accuracy by 0.12 points and "
        "that pruning after it keeps more accuracy than pruning without it (average +0.568 points "
        "on CIFAR-10, +1.764 on CIFAR-100, +0.256 on ImageNet-100). Here: a 4-block ViT on 3000 "
        "Fashion-MNIST images, accuracy drop after 30/50/70% global magnitude pruning, 5 seeds. "
        "Note: on softmax rows log(1 + a^2) is convex on [0, 1], so the penalty favours uniform "
        "(spread-out) attention, not sparse attention; attention entropy is reported."),
    component=sparse_regularised_loss,
    adapter=None,
    example=_example,
    reproduction="p055_sparse_vit",
    tags=("regulariser", "attention", "pruning", "vision-transformer"),
))
