"""Paper card: NeTI, a neural space-time representation for text-to-image personalisation (seed 48).

Components: :class:`priorlab.nn.neti.NeTIMapper` (the mapper), with
:func:`~priorlab.nn.neti.neti_conditioning`, :func:`~priorlab.nn.neti.install_neti_processors`
and :class:`~priorlab.nn.neti.NeTIConditionedUNet` to condition a diffusers U-Net on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.nn.neti import NeTIConditionedUNet, NeTIMapper, add_textual_bypass, neti_conditioning
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="A Neural Space-Time Representation for Text-to-Image Personalization",
    authors="Yuval Alaluf, Elad Richardson, Gal Metzer, Daniel Cohen-Or",
    venue="SIGGRAPH Asia (ACM TOG)",
    year=2023,
    arxiv="2305.15391",
    code_url="https://github.com/NeuralTextualInversion/NeTI",
    licence="no licence file in the official repository (all rights reserved by default)",
    seed_id=48,
)

USAGE = """\
import torch
from diffusers import UNet2DConditionModel
from priorlab.nn.neti import NeTIConditionedUNet, NeTIMapper

torch.manual_seed(0)
unet = UNet2DConditionModel(  # any diffusers UNet, e.g. StableDiffusionPipeline(...).unet
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
    attention_head_dim=8, norm_num_groups=8).requires_grad_(False)
# one input embedding per (timestep, cross-attention layer); SD 1.x: NeTIMapper(768, 16,
# norm_scale=<norm of the super-category word's CLIP embedding>)
mapper = NeTIMapper(16, num_layers=4, norm_scale=1.0)
prompt = torch.randn(1, 6, 16)  # stand-in for the prompt's token embeddings, "*" at position 2

def encode(embeddings):  # the text encoder with "*"'s input embedding replaced, row by row
    # with SD: CLIP's text transformer on inputs_embeds (before its final LayerNorm, which you
    # then pass as final_norm=...), returning (states, index of "*" per row)
    words = prompt.expand(len(embeddings), -1, -1).clone()
    words[:, 2] = embeddings
    return torch.tanh(words), torch.full((len(embeddings),), 2)

noisy, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
timesteps = torch.randint(0, 1000, (4,))
neti_unet = NeTIConditionedUNet(unet, mapper, encode, n_prompts=4)  # wraps every attention processor
optimizer = torch.optim.AdamW(mapper.parameters(), lr=1e-3, weight_decay=1e-2)
context = torch.zeros(4, 6, 16)  # ignored for the NeTI rows (all 4 here)
loss = torch.nn.functional.mse_loss(neti_unet(noisy, timesteps, context).sample, noise)
optimizer.zero_grad()
loss.backward()
optimizer.step()
# Sampling with classifier-free guidance: batch [uncond rows; prompt rows] with n_prompts = the
# prompt rows; the unconditional rows keep their states. mapper.eval(); NeTIConditionedUNet(...,
# truncation=k) keeps k of the 128 nested-dropout units (more editable, less faithful).
"""


class _TinyNeTIDenoiser(nn.Module):
    """A frozen tiny U-Net conditioned through a trainable NeTI mapper, for the contracts."""

    def __init__(self, bypass: bool = True):
        super().__init__()
        torch.manual_seed(0)
        unet = _tiny_unet().requires_grad_(False)
        self.register_buffer("prompt", torch.randn(1, 5, 16))
        # no nested dropout: the contracts compare runs that must draw the same random numbers
        mapper = NeTIMapper(16, 4, norm_scale=2.0, num_frequencies=32, hidden_dim=16,
                            nested_dropout_prob=0.0, bypass=bypass)
        self.neti = NeTIConditionedUNet(unet, mapper, self._encode, n_prompts=4)

    def _encode(self, embeddings):
        words = torch.cat([self.prompt[:, :1].expand(len(embeddings), -1, -1), embeddings[:, None],
                           self.prompt[:, 2:].expand(len(embeddings), -1, -1)], dim=1)
        return torch.tanh(words), torch.ones(len(embeddings), dtype=torch.long)

    def forward(self, inputs):
        noisy, timesteps = inputs
        return self.neti(noisy, timesteps, torch.zeros(len(noisy), 5, 16)).sample


def _tiny_unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=8, norm_num_groups=8)


def _example() -> Example:
    generator = torch.Generator().manual_seed(0)
    inputs = (torch.randn(4, 1, 8, 8, generator=generator), torch.tensor([50, 300, 600, 900]))
    return Example(
        model_fn=_TinyNeTIDenoiser,
        batch=(inputs, torch.randn(4, 1, 8, 8, generator=generator)),
        loss_fn=F.mse_loss,
        optimizer_fn=lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2),
        bad_args=(
            lambda: NeTIMapper(0, 4),
            lambda: NeTIMapper(16, 4, sigma_t=0.0),
            lambda: NeTIMapper(16, 4, nested_dropout_prob=1.5),
            lambda: NeTIMapper(16, 4, norm_scale=float("nan")),
            lambda: NeTIMapper(16, 4)(torch.tensor([1000.0]), torch.tensor([0])),
            lambda: NeTIMapper(16, 4)(torch.tensor([10.0]), torch.tensor([4])),
            lambda: NeTIMapper(16, 4)(torch.tensor([10.0]), torch.tensor([0]), truncation=0),
            lambda: add_textual_bypass(torch.randn(2, 5, 16), torch.tensor([1, 5]), torch.randn(2, 16)),
            lambda: neti_conditioning(nn.Linear(2, 2), lambda e: e, torch.tensor([1])),
            lambda: NeTIConditionedUNet(_tiny_unet(), NeTIMapper(16, 3), lambda e: e, 1),
        ),
    )


CARD = register(MethodCard(
    id="neti",
    name="NeTI (Neural Textual Inversion)",
    family="G: generative models, editing and attacks",
    kind="module",
    paper=PAPER,
    summary=("Textual inversion in a space-time conditioning space: instead of one input "
             "embedding for the pseudo-word, a small mapper M(t, l) (random Fourier features of "
             "the denoising timestep and the cross-attention layer, anchor-initialised, two "
             "128-unit layers with nested dropout, output rescaled to the super-category word's "
             "norm) gives an embedding per timestep and U-Net layer, and a textual bypass adds "
             "h + 0.2 ||h|| b/||b|| to the encoder's output at the pseudo-word for the attention "
             "values. Only the mapper is trained, by the denoising loss on a few concept images."),
    usage=USAGE,
    hyperparameters=(
        "Official defaults: 1024 Fourier frequencies with sigma_t 0.03 and sigma_l 2.0 on raw "
        "(t in [0, 1000), layer index) inputs; 10 time anchors x num_layers anchor units; hidden "
        "128; nested dropout p 0.5 (truncation index uniform over the 128 units); output norm "
        "= the super-category token's embedding norm; textual bypass on, weight 0.2. Training: "
        "AdamW lr 1e-3 scaled by batch 2 x accumulation 4 (= 8e-3), weight decay 1e-2, betas "
        "(0.9, 0.999), constant schedule, 500-1000 steps on SD 1.4 (16 cross-attention layers). "
        "At inference truncation=k (1..128) keeps the first k hidden units."),
    deviations=(
        "The mapper, bypass and per-layer attention follow the official code (checked on its "
        "current version); as there, the output normalisation rescales the concatenated "
        "[embedding, bypass] vector before it is split, and the bypass feeds only the values "
        "(keys read the unbypassed states). Differences: the frequencies are a seeded buffer "
        "(saved in the state dict; the official code keeps them as an unsaved attribute); "
        "nested dropout is drawn without Python's random module and applied as a mask (no "
        "in-place writes); an explicit truncation applies in training mode too (the official "
        "code ignores it there). Per-layer states reach the U-Net through cross_attention_kwargs "
        "['neti_states'] and a processor wrapping each attention module's own (the official "
        "code passes a dict with a call counter as encoder_hidden_states and replaces every "
        "processor); the layer index is the execution order of diffusers' cross-attention "
        "modules (down, mid, up), any number of them. The text encoder is any callable, so "
        "with a post-LN encoder such as MiniLM the bypass is added to the last hidden state "
        "(CLIP: before its final LayerNorm, via final_norm). Reproduction: SD v1.4 + CLIP are "
        "replaced by the tiny digits model of priorlab.generative (MiniLM, 4 cross-attention "
        "layers), the concept is a digit class the model never saw, 150 steps of batch 8."),
    claim_scope=(
        "The paper (SD v1.4, 10 concepts from the TI/DreamBooth/CustomDiffusion sets, 15 "
        "prompts) reports better reconstruction (image similarity) than TI, XTI and DreamBooth "
        "at comparable editability (text similarity), faster convergence with the bypass, and "
        "an inference-time reconstruction/editability control by nested-dropout truncation. "
        "Here: identity (classifier rate of the new class) and editability (a thick/thin "
        "attribute's effect in composed prompts) against plain TI on a tiny model; the "
        "truncation control and real SD are not tested."),
    component=NeTIMapper,
    example=_example,
    reproduction="p048_neti",
    tags=("diffusion", "personalisation", "textual-inversion", "cross-attention", "hypernetwork"),
))
