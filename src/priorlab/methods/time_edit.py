"""Paper card: TIME, text-to-image model editing (seed 61).

Component: :func:`priorlab.functional.time_edit.time_edit` (closed form in
:func:`~priorlab.functional.time_edit.closed_form_edit`). Not trainable: no ``Example``.
"""

from __future__ import annotations

from priorlab.functional.time_edit import time_edit
from priorlab.registry import MethodCard, Paper, register

PAPER = Paper(
    title="Editing Implicit Assumptions in Text-to-Image Diffusion Models",
    authors="Hadas Orgad, Bahjat Kawar et al.",
    venue="ICCV",
    year=2023,
    arxiv="2303.08084",
    code_url="https://github.com/bahjat-kawar/time-diffusion",
    licence="no licence file in the official repository (all rights reserved by default)",
    seed_id=61,
)

USAGE = """\
import torch
from diffusers import UNet2DConditionModel
from priorlab.functional.time_edit import align_tokens, time_edit, undo_edit

torch.manual_seed(0)
unet = UNet2DConditionModel(  # any diffusers UNet, e.g. StableDiffusionPipeline(...).unet
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
    attention_head_dim=8, norm_num_groups=8)
# With SD: states = pipe.text_encoder(ids)[0] for the source ("a pack of roses") and the
# destination ("a pack of blue roses") prompts, padded to 77 tokens; ids from pipe.tokenizer.
source_ids = torch.tensor([101, 7, 8, 102, 0, 0])
dest_ids = torch.tensor([101, 7, 42, 8, 102, 0])
source, dest = torch.randn(1, 6, 32), torch.randn(1, 6, 32)
originals = time_edit(unet, source, dest, [align_tokens(source_ids, dest_ids)], lam=0.1)
# every cross-attention to_k / to_v now maps the source tokens near where the destination's went
undo_edit(unet, originals)  # back to the original model
"""

CARD = register(MethodCard(
    id="time",
    name="TIME (Text-to-Image Model Editing)",
    family="G: generative models, editing and attacks",
    kind="function",
    paper=PAPER,
    summary=("Edits an implicit assumption of a text-to-image diffusion model (\"roses\" -> red "
             "roses) without training: every cross-attention key and value projection W is "
             "replaced in closed form by (lam W0 + sum v* c^T)(lam I + sum c c^T)^-1, so that the "
             "source prompt's token states c are projected where the destination prompt's "
             "aligned tokens went (v* = W0 c*), while W stays close to W0."),
    usage=USAGE,
    hyperparameters=(
        "lam = 0.1 (official default): the pull towards W0; smaller edits harder. edit_keys=True "
        "edits to_k as well as to_v (the paper edits both; the official script's --with_to_k). "
        "Prompt pairs: the source/destination pair, optionally with template augmentations "
        "(official --with_augs: \"A photo of ...\", \"An image of ...\", \"A picture of ...\"). "
        "Token alignment as the official code: each source token reads the next destination "
        "token with the same id; all padded positions are edited."),
    deviations=(
        "The closed form is solved as a float64 linear system instead of an explicit inverse. "
        "Biases of to_k/to_v (absent in SD) are left unchanged and v* = W0 c* excludes them. The "
        "official code maps the word \"an\" to \"a\" before aligning CLIP tokens; here token ids "
        "are aligned as given (do that mapping in the tokenizer step if needed). Layers are found "
        "by diffusers' is_cross_attention flag (or by input width text_dim) rather than by the "
        "768-d CLIP width. Reproduction: Stable Diffusion v1.4 and CLIP are replaced by a tiny "
        "diffusers UNet trained here on captioned 8x8 digits with MiniLM token states "
        "(priorlab.generative.diffusion), and TIMED by one attribute (thin -> thick strokes). "
        "MiniLM is run with a causal attention mask there, as CLIP is causal: with its usual "
        "bidirectional mask every token of the destination prompt carries the new attribute, so "
        "the edit also remaps the shared words of every other prompt (a first pilot with "
        "bidirectional states and \"a digit k\" prompts raised the thick rate of unrelated "
        "digits from 0.34 to 0.76). For the same reason the class word is the prompt's last "
        "word (\"a seven\", \"a thick seven\"), like \"roses\" in \"a pack of blue roses\"."),
    claim_scope=(
        "The paper (SD v1.4, TIMED's 147 prompt pairs) reports high efficacy and generality with "
        "a moderate specificity cost, editing 2.2% of the parameters in under a second. Here: "
        "the mechanism on a tiny text-to-image model whose captions build in an assumption "
        "(\"a seven\" = a thin seven); efficacy, generality (an unseen template) and specificity "
        "(other digits) are measured with ink-mass and classifier rates. Real SD editing and "
        "gender-debiasing are not run."),
    component=time_edit,
    reproduction="p061_time",
    tags=("diffusion", "model-editing", "cross-attention", "closed-form"),
))
