"""Paper card: GLAD, LoRA tuning with the gradient regularised towards the SAM gradient (seed 18).

Components in :mod:`priorlab.optim.glad`: :func:`~priorlab.optim.glad.apply_lora` (PEFT LoRA on
CLIP's or the stand-in's attention projections), :func:`~priorlab.optim.glad.regularise_gradients`
and the :class:`~priorlab.optim.glad.GLAD` adapter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.optim.glad import GLAD, apply_lora, regularise_gradients
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="GLAD: Generalizable Tuning for Vision-Language Models",
    authors="Yuqi Peng, Pengfei Wang, Jianzhuang Liu, Shifeng Chen",
    venue="arXiv preprint",
    year=2025,
    arxiv="2507.13089",
    code_url="",
    licence="no official code published (the paper says it will be released)",
    seed_id=18,
)

USAGE = """\
import torch
import torch.nn.functional as F
from priorlab.optim.glad import apply_lora, regularise_gradients
from priorlab.vl.standin import tiny_clip

torch.manual_seed(0)
clip = apply_lora(tiny_clip(), "clip", rank=2)      # LoRA on q/k/v of both towers (PEFT)
params = [p for p in clip.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=1e-2)
images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
input_ids = torch.tensor([[97, 5, 6, 98, 1], [97, 7, 98, 1, 1], [97, 8, 9, 10, 98]])

def loss_fn():
    out = clip(input_ids=input_ids, pixel_values=images)
    return F.cross_entropy(out.logits_per_image, labels)

for step in range(3):
    optimizer.zero_grad()
    loss_fn().backward()                             # the task gradient g
    cosine = regularise_gradients(params, loss_fn, rho=0.05, strength=0.5)  # g + 0.5 (g_sam - g)
    optimizer.step()
print(f"cos(g, g_sam) = {cosine:.3f}")
"""


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _loss(out, y):
    return F.cross_entropy(out, y)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def _example() -> Example:
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(24, 6, generator=generator), torch.randint(0, 3, (24,), generator=generator))
    return Example(
        model_fn=_tiny_model,
        batch=batch,
        loss_fn=_loss,
        optimizer_fn=_sgd,
        adapter_fn=lambda: GLAD(_loss, rho=0.05, strength=0.5),
        zero_strength=(_sgd, lambda: GLAD(_loss, strength=0.0), _loss),
        baseline=(_sgd, lambda: None, _loss),
        bad_args=(
            lambda: GLAD(_loss, rho=-0.1),
            lambda: GLAD(_loss, strength=1.5),
            lambda: GLAD(_loss, rho=math.nan),
            lambda: GLAD("cross_entropy"),
            lambda: regularise_gradients([torch.zeros(2, requires_grad=True)], lambda: torch.zeros(())),
            lambda: apply_lora(nn.Linear(3, 3), "clpi"),
            lambda: apply_lora(nn.Sequential(nn.Linear(3, 3)), ["q_proj"]),
            lambda: apply_lora(nn.Sequential(nn.Linear(3, 3)), ["0"], rank=0),
        ),
    )


CARD = register(MethodCard(
    id="glad",
    name="GLAD (LoRA with SAM-regularised gradient)",
    family="A: adaptation and continual learning",
    kind="adapter",
    paper=PAPER,
    summary=("Adapts CLIP with LoRA and regularises each step's gradient towards the "
             "sharpness-aware (SAM) gradient: with g the task gradient of the LoRA weights, "
             "g_sam the gradient at w + rho g/||g||, the optimiser steps with "
             "g + lambda (g_sam - g), the gradient of the task loss plus lambda times the "
             "sharpness gap L(w + eps) - L(w). Steers few-shot LoRA to flatter regions that "
             "generalise to novel classes and domains."),
    usage=USAGE,
    hyperparameters=(
        "The paper's hyperparameter values were not retrieved (no official code). Defaults here: "
        "SAM radius rho 0.05 (SAM's default), strength lambda 0.5 (halfway between LoRA and SAM); "
        "LoRA as CLIP-LoRA (Zanella & Ben Ayed, 2024): rank 2, alpha 1, on the q/k/v projections "
        "of every layer (preset 'clip' covers both towers of a transformers CLIPModel)."),
    deviations=(
        "No official code and the method section's equation was not retrieved: the combination "
        "g + lambda (g_sam - g) is our reading of the paper's Fig. 1 (SAM gradient as the "
        "reference that steers the original gradient); the paper may weight, normalise or "
        "project differently. The perturbation uses one global gradient norm over all LoRA "
        "tensors (SAM's). The GLAD adapter re-evaluates only loss_fn at the perturbed point "
        "(other adapters' loss terms keep their unperturbed gradient). The reproduction runs on "
        "the vision-language stand-in (no CLIP weights offline): a 3-block ViT pre-trained here "
        "against frozen MiniLM caption embeddings on Fashion-MNIST, downstream images upside "
        "down; LoRA only on the image encoder (the MiniLM text tower stays frozen, its zero-shot "
        "prompt features are the classifier); 100 AdamW steps, lr chosen on base validation "
        "images from the same 4-point grid for LoRA and GLAD; rho and lambda fixed at the "
        "defaults, not tuned; no data augmentation."),
    claim_scope=(
        "The paper claims that plain LoRA already matches state-of-the-art prompt learning and "
        "that GLAD beats prior tuning methods in base-to-novel, domain and cross-dataset "
        "generalisation on 15 datasets with CLIP. Here: base-to-novel on the Fashion-MNIST "
        "stand-in (5 base, 5 novel classes), GLAD against plain LoRA of the same rank, steps and "
        "lr grid, 5 seeds; the real-CLIP settings are untested."),
    component=regularise_gradients,
    adapter=GLAD,
    example=_example,
    reproduction="p018_glad",
    tags=("lora", "peft", "sam", "gradient-regularisation", "vision-language", "base-to-novel"),
))
