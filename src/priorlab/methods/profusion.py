"""Paper card: ProFusion (seed 35).

Components: :class:`priorlab.nn.profusion.PromptNet` (image -> pseudo-word embedding) and
:func:`priorlab.nn.profusion.fusion_sampling` (on any diffusers UNet2DConditionModel). No
adapter: customisation is a plain denoising loss through the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.nn.profusion import PromptNet, fusion_refine, fusion_sampling
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title=("Enhancing Detail Preservation for Customized Text-to-Image Generation: "
           "A Regularization-Free Approach"),
    authors="Yufan Zhou et al.",
    venue="arXiv",
    year=2023,
    arxiv="2305.13579",
    code_url="https://github.com/drboog/ProFusion",
    licence="Apache-2.0 (the bundled diffusers fork's licence headers; no top-level licence file seen)",
    seed_id=35,
)

USAGE = """\
import torch
from diffusers import UNet2DConditionModel
from priorlab.nn.profusion import PromptNet, fusion_sampling

torch.manual_seed(0)
unet = UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                            cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8).eval()
net = PromptNet(image_size=8, embed_dim=16, channels=(8, 16))
reference = torch.rand(2, 1, 8, 8) * 2 - 1  # the user's image, in the UNet's input space

def encode(prompt_embedding):  # your text encoder with S* put in the pseudo-word's slot
    states = torch.zeros(2, 4, 16)
    states[:, 1] = prompt_embedding
    return states

composed = lambda x_t, t: encode(net(reference, x_t, t))  # "a <S*> wearing a hat"
domain_word = torch.randn(2, 4, 16)  # states of "a person wearing a hat"
empty = torch.zeros(1, 4, 16)  # states of ""
x0 = fusion_sampling(unet, composed, domain_word, empty, positions=torch.tensor([1, 1]), steps=4,
                     guidance=3.0, reference_guidance=2.0, refine_guidance=3.0)
# Customising: train net (and the UNet's to_q/to_k/to_v) with the plain denoising loss of
# unet(x_t, t, encode(net(reference, x_t, t))) on the user's image(s) -- no regulariser.
"""


class _PromptNetOnPairs(nn.Module):
    """PromptNet on (N, 2, S, S) inputs (reference, noisy image) at t = 500, for the contracts."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = PromptNet(image_size=8, embed_dim=6, channels=(8, 16), time_dim=8)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.net(pairs[:, :1], pairs[:, 1:], 500)


def _example() -> Example:
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(6, 2, 8, 8, generator=generator), torch.randn(6, 6, generator=generator))
    return Example(
        model_fn=_PromptNetOnPairs,
        batch=batch,
        loss_fn=nn.functional.mse_loss,
        optimizer_fn=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2),
        bad_args=(
            lambda: PromptNet(image_size=6, channels=(8, 16, 32)),
            lambda: PromptNet(time_dim=7),
            lambda: PromptNet(init_embedding=torch.zeros(5)),
            lambda: PromptNet()(torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8), 1),
            lambda: fusion_refine(torch.zeros(1), torch.zeros(1), 0.3, 0.4, eta=2.0),
            lambda: fusion_refine(torch.zeros(1), torch.zeros(1), 0.4, 0.3),
        ),
    )


CARD = register(MethodCard(
    id="profusion",
    name="ProFusion (PromptNet + fusion sampling)",
    family="G: generative models, editing and attacks",
    kind="module",
    paper=PAPER,
    summary=("Customises a text-to-image model to a concept from one image without regularisers: "
             "an encoder (PromptNet) maps the image, the noisy sample x_t and t to the pseudo-word "
             "embedding S*, pre-trained on the concept's domain and fine-tuned (with the UNet's "
             "attention) by the plain denoising loss. Fusion sampling keeps composed prompts "
             "editable: each step first moves x_t with the guided prediction for the composed "
             "prompt with S* scaled down (a step to t-1 and back), then samples with "
             "e_u + w (e(c[S*]) - e_u) + w_r (e(c[domain word]) - e_u)."),
    usage=USAGE,
    hyperparameters=(
        "Fusion sampling (official notebook, SD 2, 50 DDIM steps): guidance w 7, reference "
        "guidance w_r 5, refine_steps 1 (0 treats the conditions as independent, worse per the "
        "authors), refine_guidance 7, refine_scale 0.6 (0.4-0.9: higher keeps more of the image), "
        "refine_eta 1; needs a DDIM scheduler. Customisation: AdamW lr 2e-5, wd 1e-2, 100 "
        "iterations at batch 4 on PromptNet + UNet to_q/to_k/to_v; pre-training: lr 2e-5, 80k "
        "steps at batch 8, promptnet_l2_reg 0. Here (8x8 digits, CPU): guidance 3, w_r 2.1, "
        "refine_guidance 3 (the official ratios), lr 1e-3 for 400 pre-training and 150 "
        "fine-tuning steps."),
    deviations=(
        "PromptNet is a two-level time-conditioned CNN (the official one is a UNet encoder with "
        "cross-attention to CLIP image features, pooled from every level); there is no image "
        "encoder here, so the reference enters through its pixels only. Its head starts at the "
        "domain word's embedding (zero weight, bias = 'digit'); the official head starts random. "
        "While sampling, PromptNet reads the reference image in place of x_t (the official "
        "default, with_noise=False; training feeds x_t). The fusion stage's closed form is "
        "rewritten without the 1/(1 - a_prev) factor so it is finite on a scheduler's last "
        "step; the update is the same. The official residuals into the UNet (unused there, "
        "res_scale 0) are left out. "
        "The official customisation builds a mini data set of 31 inpainted augmentations of "
        "the one image; the reproduction uses the 4 concept images all arms get. Learning rates "
        "are raised (1e-3) for the short CPU budget."),
    claim_scope=(
        "The paper: SD 2 with a PromptNet pre-trained on FFHQ, customised to a new face from one "
        "image, keeps more identity detail than regularised methods (E4T, DreamBooth, textual "
        "inversion) while following composed prompts. Here: a tiny digits model trained "
        "without class 9, PromptNet pre-trained on digits 0-8, concept 'nine' from 4 images; "
        "identity and editability are tested for non-inferiority against TI with an L2 pull to "
        "'digit' and plain TI."),
    component=fusion_sampling,
    example=_example,
    reproduction="p035_profusion",
    tags=("diffusion", "personalisation", "text-to-image", "sampling"),
))
