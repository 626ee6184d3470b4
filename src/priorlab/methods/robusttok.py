"""Paper card: RobustTok, latent perturbation for tokenizers (seed 50).

Components: :func:`priorlab.functional.tokenizer_regularisers.latent_perturbation` (training-time
sampling-error synthesis), :func:`perturbation_ratio` (its annealing), :func:`perturb_tokens` and
:func:`priorlab.generative.autoregressive.perturbed_frechet` (the pFID-style robustness score);
used through ``train_tokenizer(..., perturbation={...})`` of :mod:`priorlab.generative.tokenizer`.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.functional.tokenizer_regularisers import latent_perturbation, perturb_tokens
from priorlab.generative.tokenizer import VQTokenizer, vq_loss
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Robust Latent Matters: Boosting Image Generation with Sampling Error Synthesis",
    authors="Kai Qiu, Xiang Li, Jason Kuen, Hao Chen, Xiaohao Xu, Jiuxiang Gu, Yinyi Luo, "
            "Bhiksha Raj, Zhe Lin, Marios Savvides",
    venue="arXiv",
    year=2025,
    arxiv="2503.08354",
    code_url="https://github.com/lxa9867/ImageFolder",
    licence="see the official repository (LICENSE.md)",
    seed_id=50,
)

USAGE = """\
import torch
from priorlab.generative.tokenizer import VQTokenizer, train_tokenizer
from priorlab.functional.tokenizer_regularisers import latent_perturbation, perturb_tokens

torch.manual_seed(0)
images = torch.rand(32, 1, 16, 16)
tokenizer = VQTokenizer(width=8, codebook_size=16, code_dim=4)
# RobustTok: 10% of each batch decodes from tokens moved to one of their delta nearest codes
history = train_tokenizer(tokenizer, images, steps=3, batch_size=8,
                          perturbation={"alpha": 1.0, "beta": 0.1, "delta": 4})
# inside a custom tokenizer loss: decode from perturbed codes (straight-through to the encoder)
codes = latent_perturbation(tokenizer.encode(images), tokenizer.codes(), alpha=1.0, beta=0.1, delta=4)
recon = tokenizer.decode_latents(codes)
tokens = tokenizer.tokenize(images)
noisy = perturb_tokens(tokens, tokenizer.codes(), rate=0.25, delta=4)  # for a pFID-style score
print(tokenizer.decode(noisy).shape, (noisy != tokens).float().mean().item())
"""


class _PerturbedTokenizer(nn.Module):
    """A tokenizer whose forward returns its RobustTok training loss (for the contract tests);
    ``beta`` 0 is the plain VQ loss."""

    def __init__(self, beta: float):
        super().__init__()
        torch.manual_seed(0)
        self.tokenizer = VQTokenizer(width=4, codebook_size=8, code_dim=4)
        self.beta = beta

    def forward(self, images):
        perturbation = {"alpha": 1.0, "beta": self.beta, "delta": 3} if self.beta else None
        loss, _ = vq_loss(self.tokenizer, images, perturbation=perturbation,
                          generator=torch.Generator().manual_seed(0))
        return loss


def _example() -> Example:
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    codebook = torch.randn(8, 4)
    return Example(
        model_fn=lambda: _PerturbedTokenizer(0.5),
        batch=(images, images),
        loss_fn=lambda loss, _target: loss,
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=0.05),
        bad_args=(
            lambda: latent_perturbation(torch.randn(2, 4, 4, 4), codebook, alpha=1.5),
            lambda: latent_perturbation(torch.randn(2, 4, 4, 4), codebook, beta=-0.1),
            lambda: latent_perturbation(torch.randn(2, 4, 4, 4), codebook, delta=9),
            lambda: latent_perturbation(torch.randn(2, 3, 4, 4), codebook, delta=2),
            lambda: perturb_tokens(torch.tensor([0, 8]), codebook, rate=0.5, delta=2),
            lambda: perturb_tokens(torch.tensor([0.5]), codebook, rate=0.5, delta=2),
        ),
    )


CARD = register(MethodCard(
    id="robusttok",
    name="RobustTok (latent perturbation / sampling-error synthesis for tokenizers)",
    family="G: generative models, editing and attacks",
    kind="function",
    paper=PAPER,
    summary=("While training a discrete image tokenizer, a share of each batch is decoded from "
             "tokens replaced by one of the delta codes nearest to their latent, imitating the "
             "near-miss tokens an autoregressive generator samples; the decoder learns to map "
             "them to plausible images, so generation improves at similar reconstruction. The "
             "same perturbation on real images' tokens, decoded and scored by FID, is the "
             "paper's pFID robustness metric."),
    usage=USAGE,
    hyperparameters=(
        "Official (configs/RobustTok.yaml, xqgan_train.py): alpha 1.0 (per-token replacement "
        "probability), beta 0.1 (share of the batch perturbed), delta 100 nearest of 4,096 codes; "
        "alpha and delta are multiplied by a ratio that is 1 until epoch 40 and falls linearly to "
        "0.5 at epoch 120 of 200. Here: alpha 1.0, beta 0.1, delta 4 of 64 codes, the same "
        "annealing at 20% / 60% of the steps (perturbation_ratio)."),
    deviations=(
        "delta 4 of 64 codes instead of 100 of 4,096 (the official share would be under 2 codes). "
        "The tokenizer is a 16x16 conv VQ-VAE trained from scratch, not the official DINOv2-"
        "initialised ViT tokenizer with semantic, GAN and lecam losses; the generator is a "
        "2-layer AR transformer, not RAR. pFID here perturbs token ids to codes near their own "
        "code (the training-time perturbation uses codes near the continuous latent) and uses a "
        "digits classifier's Fréchet distance, not Inception FID; its rate (0.25) and delta (4) "
        "are ours."),
    claim_scope=(
        "The paper: on ImageNet 256x256, RobustTok improves gFID of RAR and other generators "
        "at similar rFID, and pFID correlates with gFID better than rFID. Here: one tokenizer "
        "width on 16x16 digits with and without the perturbation, generation and pFID measured "
        "with a classifier Fréchet distance."),
    component=latent_perturbation,
    adapter=None,
    example=_example,
    reproduction="p050_robusttok",
    tags=("tokenizer", "vq-vae", "autoregressive", "generative", "robustness"),
))
