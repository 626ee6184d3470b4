"""Paper card: R-AMT, regularised mask tuning (seed 19).

Components in :mod:`priorlab.nn.mask_tuning`: :func:`~priorlab.nn.mask_tuning.apply_masks` (the
:class:`~priorlab.nn.mask_tuning.BinaryMask` parametrisation, straight-through), the score
penalty, :func:`~priorlab.nn.mask_tuning.distillation_kl` and the gradient dropout
(:func:`~priorlab.nn.mask_tuning.gradient_dropout`,
:func:`~priorlab.nn.mask_tuning.gradient_dropout_backward`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.nn.mask_tuning import apply_masks, distillation_kl, gradient_dropout, mask_penalty
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Regularized Mask Tuning: Uncovering Hidden Knowledge in Pre-trained Vision-Language Models",
    authors="Kecheng Zheng, Wei Wu, Ruili Feng, Kai Zhu, Jiawei Liu, Deli Zhao, Zheng-Jun Zha, "
            "Wei Chen, Yujun Shen",
    venue="ICCV",
    year=2023,
    arxiv="2307.15049",
    code_url="https://github.com/wuw2019/R-AMT",
    licence="no licence file in the repository",
    seed_id=19,
)

USAGE = """\
import torch
import torch.nn.functional as F
from torch import nn
from priorlab.nn.mask_tuning import (apply_masks, distillation_kl, gradient_dropout_backward,
                                     mask_penalty, mask_scores, mask_sparsity)

torch.manual_seed(0)
encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))  # a "pre-trained" encoder
first_weight = encoder[0].weight.detach().clone()
text = F.normalize(torch.randn(4, 8), dim=-1)                  # fixed class text features
zero_shot = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
zero_shot.load_state_dict(encoder.state_dict())                # the frozen zero-shot copy
apply_masks(encoder, ["0", "2"])       # CLIP: apply_masks(clip_model) masks the official layers
optimizer = torch.optim.Adam(mask_scores(encoder), lr=2e-3)
x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
for step in range(20):
    logits = 10 * F.normalize(encoder(x), dim=-1) @ text.T
    with torch.no_grad():
        teacher = 10 * F.normalize(zero_shot(x), dim=-1) @ text.T
    task = F.cross_entropy(logits, y) + 1e-4 * mask_penalty(encoder)
    optimizer.zero_grad()
    # drop task-gradient elements that fight the KL-to-zero-shot gradient, then step
    gradient_dropout_backward(task, distillation_kl(logits, teacher), mask_scores(encoder))
    optimizer.step()
print(f"weights switched off: {mask_sparsity(encoder):.1%}")
assert torch.equal(encoder[0].parametrizations.weight.original, first_weight)  # never changes
"""


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    apply_masks(model, ["0", "2"])
    return model


def _adam(params):
    # only the scores train; Adam (the official optimiser) moves each score by about lr per step,
    # so masks flip after a few steps at this rate
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=3e-3)


def _example() -> Example:
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(24, 6, generator=generator), torch.randint(0, 3, (24,), generator=generator))
    logits = torch.zeros(4, 3)
    return Example(
        model_fn=_tiny_model,
        batch=batch,
        loss_fn=lambda out, y: F.cross_entropy(out, y),
        optimizer_fn=_adam,
        bad_args=(
            lambda: apply_masks(nn.Linear(3, 3), "clip_visoin"),
            lambda: apply_masks(nn.Linear(3, 3), ["no_such_module"]),
            lambda: apply_masks(nn.Linear(3, 3), [""], init=1e-2),
            lambda: apply_masks(nn.Sequential(nn.Linear(3, 3)), ["0"], init=1e-3, threshold=5e-3),
            lambda: mask_penalty(nn.Linear(3, 3)),
            lambda: gradient_dropout(torch.ones(3), torch.ones(4)),
            lambda: gradient_dropout(torch.ones(3), torch.ones(3), strength=1.5),
            lambda: gradient_dropout(torch.full((3,), math.nan), torch.ones(3)),
            lambda: distillation_kl(logits, torch.zeros(4, 2)),
            lambda: distillation_kl(logits, logits, temperature=0.0),
        ),
    )


CARD = register(MethodCard(
    id="ramt",
    name="R-AMT (regularised mask tuning)",
    family="A: adaptation and continual learning",
    kind="parametrisation",
    paper=PAPER,
    summary=("Adapts a frozen vision-language model by learning a binary mask on selected "
             "pre-trained weights (real-valued scores, thresholded, straight-through gradients; "
             "the weights never change), trained with cross-entropy; gradient dropout regularises "
             "it: each element of the task gradient that disagrees in sign with the gradient of "
             "the KL divergence to the zero-shot predictions is dropped with probability "
             "|g_kl| / (|g| + |g_kl|)."),
    usage=USAGE,
    hyperparameters=(
        "Official ViT-B/16 config (configs/trainers/MASK/vit_b16.yaml): masks on the image "
        "encoder's patch embedding and every block's attention in/out projections (MASK_MLP "
        "False: MLPs, norms, biases, embeddings and the text encoder unmasked); scores "
        "initialised to 1e-2 ('1s' x MASK.SCALE), threshold 5e-3, straight-through binarizer; "
        "L2-norm penalty on the scores, weight 1e-4; KL temperature 1, teacher = zero-shot CLIP "
        "with the dataset's hand-written template; gradient dropout strength (GDR_LAMBDA) 1; Adam "
        "lr 8e-5, no weight decay, cosine schedule, 30 epochs, batch 32, 16 shots."),
    deviations=(
        "The components follow the official code (binarize with identity gradient; keep "
        "probability (sign(g)(g+g_kl)/(|g|+|g_kl|+eps)+1)/2 against a uniform draw; only the "
        "thinned task gradient updates the scores; as officially, the masked model starts equal "
        "to the zero-shot one, so the KL and its gradient are zero, and nothing is dropped, until "
        "the first score crosses the threshold). distillation_kl is the true KL; the official "
        "loss is the cross-entropy to the teacher's probabilities, which differs by the teacher's "
        "entropy (a constant: same gradient). Masks attach through torch's parametrize on any "
        "Linear/Conv, with presets for transformers' CLIPModel (q/k/v/out_proj in place of "
        "open_clip's fused in_proj) and the priorlab.vl stand-in. The reproduction runs on the "
        "vision-language stand-in (no CLIP weights offline): a 3-block ViT pre-trained here "
        "against frozen MiniLM caption embeddings on Fashion-MNIST, downstream images upside "
        "down; batch 16 and 20 epochs (100 steps) instead of 32 and 30, and the Adam lr chosen "
        "on base validation images from {1.2e-4, 2e-4, 3.5e-4, 6e-4} (a score must move by 5e-3 "
        "to flip; with a cosine schedule over 100 steps nothing flips below 1e-4; in the pilot "
        "1.2e-4 switched off 2% of the masked weights, 2e-4 10%); no data augmentation."),
    claim_scope=(
        "The paper claims consistent gains over prompt and adapter tuning on 11 datasets with "
        "CLIP ViT-B/16 (few-shot: +18.73 points over zero-shot CLIP masking 2.56% of the "
        "weights), better base-to-novel generalisation than unregularised mask tuning and than "
        "CoOp/CoCoOp, and gains when combined with other tuning methods. Here: base-to-novel on "
        "the Fashion-MNIST stand-in (5 base, 5 novel classes), R-AMT against mask tuning "
        "without gradient dropout and CoOp, 5 seeds; the real-CLIP settings are untested."),
    component=apply_masks,
    adapter=None,
    example=_example,
    reproduction="p019_ramt",
    tags=("mask-tuning", "vision-language", "regularisation", "base-to-novel", "gradient-surgery"),
))
