"""Paper card: PromptSRC, self-regulating prompts (seed 26).

Components: :func:`priorlab.functional.prompt_regularisers.promptsrc_loss` (with
:func:`~priorlab.functional.prompt_regularisers.self_consistency_terms`) and
:class:`~priorlab.functional.prompt_regularisers.GaussianPromptAggregator`; the prompted
stand-in model is :class:`priorlab.vl.standin.PromptedStandIn`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.functional.prompt_regularisers import (
    GaussianPromptAggregator,
    gaussian_epoch_weights,
    promptsrc_loss,
)
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Self-regulating Prompts: Foundational Model Adaptation without Forgetting",
    authors="Muhammad Uzair Khattak, Syed Talal Wasim, Muzammal Naseer, Salman Khan, "
            "Ming-Hsuan Yang, Fahad Shahbaz Khan",
    venue="ICCV",
    year=2023,
    arxiv="2307.06948",
    code_url="https://github.com/muzairkhattak/PromptSRC",
    licence="MIT",
    seed_id=26,
)

USAGE = """\
import torch
import torch.nn.functional as F
from priorlab.functional.prompt_regularisers import GaussianPromptAggregator, promptsrc_loss

torch.manual_seed(0)
# any CLIP-like model: frozen features (here random) and learnable prompts that shift them
frozen_text = F.normalize(torch.randn(5, 32), dim=-1)          # K classes, template ensemble
text_prompt = torch.zeros(5, 32, requires_grad=True)
image_proj = torch.randn(16, 32)                               # frozen "image encoder"
visual_prompt = torch.zeros(32, requires_grad=True)
x, y = torch.randn(40, 16), torch.randint(0, 5, (40,))
epochs, scale = 4, 20.0
optimizer = torch.optim.SGD([text_prompt, visual_prompt], lr=0.05, momentum=0.9)
gpa = GaussianPromptAggregator([text_prompt, visual_prompt], epochs, mean=0.75 * epochs, std=1.0)
for epoch in range(epochs):
    for batch in torch.split(torch.randperm(40), 8):
        frozen_image = F.normalize(x[batch] @ image_proj, dim=-1)
        image = F.normalize(x[batch] @ image_proj + visual_prompt, dim=-1)
        text = F.normalize(frozen_text + text_prompt, dim=-1)
        loss = promptsrc_loss(scale * image @ text.T, y[batch], text, frozen_text, image,
                              frozen_image, scale * frozen_image @ frozen_text.T)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    gpa.update()          # after every epoch
gpa.load_into()           # the prompts become the Gaussian-weighted average over epochs
# With transformers' CLIPModel: text / image features from get_text_features /
# get_image_features of the prompted model, the frozen ones from the original model.
"""


class _TinyPromptedModel(nn.Module):
    """A frozen linear 'CLIP' with additive text and image prompts; returns everything the
    PromptSRC loss needs. The prompts start well away from zero, so the self-consistency terms
    have a drift to pull back and the contract's "loss drops" is about the whole loss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("image_proj", torch.randn(6, 8))
        self.register_buffer("frozen_text", F.normalize(torch.randn(3, 8), dim=-1))
        self.text_prompt = nn.Parameter(0.5 * torch.randn(3, 8))
        self.visual_prompt = nn.Parameter(0.5 * torch.randn(8))

    def forward(self, x: torch.Tensor):
        frozen_image = F.normalize(x @ self.image_proj, dim=-1)
        image = F.normalize(x @ self.image_proj + self.visual_prompt, dim=-1)
        text = F.normalize(self.frozen_text + self.text_prompt, dim=-1)
        return (10 * image @ text.T, text, self.frozen_text, image, frozen_image,
                10 * frozen_image @ self.frozen_text.T)


def _loss(out, y):
    return promptsrc_loss(out[0], y, *out[1:])


def _zero_strength_loss(out, y):
    return promptsrc_loss(out[0], y, *out[1:], text_weight=0.0, image_weight=0.0, logits_weight=0.0)


def _example() -> Example:
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(12, 6, generator=generator), torch.randint(0, 3, (12,), generator=generator))
    logits, text = torch.zeros(4, 3), torch.zeros(3, 8)
    image = torch.zeros(4, 8)

    def sgd(params):
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)

    return Example(
        model_fn=_TinyPromptedModel,
        batch=batch,
        loss_fn=_loss,
        optimizer_fn=sgd,
        zero_strength=(sgd, None, _zero_strength_loss),
        baseline=(sgd, None, lambda out, y: F.cross_entropy(out[0], y)),
        bad_args=(
            lambda: promptsrc_loss(logits, torch.zeros(4, dtype=torch.long), text, text, image, image,
                                   logits, text_weight=-1.0),
            lambda: promptsrc_loss(logits, torch.full((4,), 3), text, text, image, image, logits),
            lambda: promptsrc_loss(logits, torch.zeros(4, dtype=torch.long), torch.zeros(2, 8), text,
                                   image, image, logits),
            lambda: promptsrc_loss(logits, torch.zeros(4, dtype=torch.long), text, text, image,
                                   torch.zeros(4, 7), logits),
            lambda: promptsrc_loss(torch.full((4, 3), math.nan), torch.zeros(4, dtype=torch.long), text,
                                   text, image, image, logits),
            lambda: gaussian_epoch_weights(0),
            lambda: gaussian_epoch_weights(20, std=0.0),
            lambda: GaussianPromptAggregator([], 5),
        ),
    )


CARD = register(MethodCard(
    id="promptsrc",
    name="PromptSRC (self-regulating prompts)",
    family="A: adaptation and continual learning",
    kind="function",
    paper=PAPER,
    summary=("Prompt learning for a frozen vision-language model with three self-consistency "
             "terms that keep the prompted model close to the frozen one: L1 between prompted "
             "and frozen (template-ensembled) text features, L1 between prompted and frozen "
             "image features, and KL from the zero-shot logits; the prompts kept are a "
             "Gaussian-weighted average of the prompts after each epoch (GPA)."),
    usage=USAGE,
    hyperparameters=(
        "text_weight 25 and image_weight 10 (official TEXT_LOSS_WEIGHT / IMAGE_LOSS_WEIGHT), "
        "logits_weight 1 (the official KL has no weight); the L1s are means over elements of "
        "unit features, the KL is summed and divided by logits.numel(). GPA: Gaussian over "
        "epochs 1..E with mean 15 and std 1 for E = 20 (base-to-novel). Official prompts: 4 "
        "text and 4 visual tokens in the first 9 layers of both encoders (IVLP), text context "
        "initialised from 'a photo of a'; SGD lr 0.0025, batch 4, 20 epochs, 16 shots; frozen "
        "text features averaged over CLIP's 60 ImageNet templates."),
    deviations=(
        "The components follow the official trainer. The reproduction runs on the vision-language "
        "stand-in of priorlab.vl (no CLIP weights offline): a small ViT pre-trained here with "
        "the CLIP loss against frozen all-MiniLM-L6-v2 caption embeddings, on all ten "
        "Fashion-MNIST classes (pre-training on the base half only left novel zero-shot accuracy "
        "at chance, 0.18, so there would be nothing to keep); downstream images are shown upside "
        "down to open a domain gap. Prompts are shallow (text context after [CLS] in MiniLM's "
        "input embeddings, visual tokens after the ViT's class token) rather than deep; MiniLM "
        "is mean-pooled (context tokens included) where CLIP reads the EOT token; 8 caption "
        "templates instead of 60; batch 16 instead of 4 and 10 epochs instead of 20 (CPU); GPA "
        "mean and std scaled with the epochs (7.5, 0.5); the learning rate is selected per arm "
        "on base validation images from {0.05, 0.15, 0.5, 1.5} (MiniLM's word embeddings have norm "
        "~1 and the stand-in's logit scale ~15, so CLIP's 0.0025 leaves them in place); no "
        "warm-up epoch."),
    claim_scope=(
        "The paper claims (Table 1, 11 datasets, CLIP ViT-B/16) that PromptSRC's novel-class "
        "accuracy (76.1) is far above CoOp's (63.2) and IVLP's (71.8) at equal or better base "
        "accuracy, with the best harmonic mean, and gains in cross-dataset, domain and few-shot "
        "transfer. Here: base-to-novel on the Fashion-MNIST stand-in (5 base, 5 novel classes), "
        "PromptSRC against CoOp and IVLP, 5 seeds; the real-CLIP settings are untested."),
    component=promptsrc_loss,
    adapter=None,
    example=_example,
    reproduction="p026_promptsrc",
    tags=("prompt-learning", "vision-language", "regularisation", "base-to-novel"),
))
