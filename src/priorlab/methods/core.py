"""Paper card: CoRe, context-regularised text-embedding learning (seed 14).

Components: :func:`priorlab.functional.core_regularisers.core_losses` (both terms for one
batch), the pure losses :func:`~priorlab.functional.core_regularisers.context_embedding_loss`
and :func:`~priorlab.functional.core_regularisers.context_attention_loss`, the attention capture
:func:`~priorlab.functional.core_regularisers.capture_cross_attention` and the rescaling
:func:`~priorlab.functional.core_regularisers.rescale_embedding`. The regularisers act on a text
embedding through a frozen text-to-image model, not on a classifier's training: no ``Example``
(the contract tests train classifiers); tests/test_core_regularisers.py covers the invariants.
"""

from __future__ import annotations

from priorlab.functional.core_regularisers import core_losses
from priorlab.registry import MethodCard, Paper, register

PAPER = Paper(
    title="CoRe: Context-Regularized Text Embedding Learning for Text-to-Image Personalization",
    authors="Feize Wu, Yun Pang et al.",
    venue="AAAI",
    year=2025,
    arxiv="2408.15914",
    code_url="https://github.com/FeizeWu/CoRe",
    licence="no licence file found in what we could read of the official repository",
    seed_id=14,
)

USAGE = """\
import torch
from diffusers import UNet2DConditionModel
from priorlab.functional.core_regularisers import core_losses, rescale_embedding

torch.manual_seed(0)
unet = UNet2DConditionModel(  # with SD: pipe.unet, and text states from pipe.text_encoder
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
    attention_head_dim=4, norm_num_groups=8).requires_grad_(False)
encoder = torch.nn.TransformerEncoderLayer(32, 4, batch_first=True).eval().requires_grad_(False)
words = torch.randn(6, 32)          # input embeddings of "<sot> a S* in the jungle <eot>"
category = torch.randn(32)          # input embedding of the super-category word, e.g. "dog"
concept = torch.nn.Parameter(category.clone())  # S*, initialised at the super-category
k = 2                               # position of S*; its own state is never regularised
mask = torch.ones(1, 6, dtype=torch.bool)
mask[0, k] = False                  # context tokens: every real token but S*
optimizer = torch.optim.AdamW([concept], lr=5e-3, weight_decay=0.0)
for step in range(3):
    with_concept = torch.cat([words[:k], concept[None], words[k + 1:]])[None]
    with_category = torch.cat([words[:k], category[None], words[k + 1:]])[None]
    noisy, t = torch.randn(1, 1, 8, 8), torch.randint(1000, (1,))
    terms = core_losses(unet, noisy, t, encoder(with_concept), encoder(with_category), mask)
    loss = 1.5e-4 * terms["embedding"] + 0.05 * terms["attention"]  # + the diffusion loss
    norm = concept.detach().norm()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if 120 <= step < 180:           # Eq. 6 in the middle of 300 steps: keep the norm
        rescale_embedding(concept.data, norm)
"""

CARD = register(MethodCard(
    id="core",
    name="CoRe (Context Regularization)",
    family="G: generative models, editing and attacks",
    kind="function",
    paper=PAPER,
    summary=("Textual inversion whose pseudo-word S* is regularised through its context: for "
             "prompts holding S* (\"a S* in the jungle\") and the same prompts with the "
             "super-category word (\"a dog in the jungle\"), the text encoder's output states of "
             "the other tokens should agree (1 - cosine, Eq. 3) and so should the mean "
             "cross-attention each of them receives in the UNet (squared difference, Eq. 4); "
             "S* itself is left free. Loss = L_diffusion + lam_emb L_emb + lam_attn L_attn."),
    usage=USAGE,
    hyperparameters=(
        "Official stage 1 (SD v2.1 base): lam_emb = 1.5e-4, lam_attn = 0.05, 300 steps, batch 6, "
        "AdamW lr 5e-3 constant, S* initialised at the super-category token, embedding "
        "rescaling (Eq. 6) at steps 120-180, a regularisation prompt set of 100 prompts per "
        "concept type (one drawn per step); stage 2 fine-tunes the UNet 1000 steps at lr 2e-6 "
        "with the embedding frozen. Test-time optimisation: 10 steps at lr 5e-4 on one prompt "
        "without the diffusion loss. Context tokens: the real tokens up to EOT, S* excluded."),
    deviations=(
        "Eq. 3 is implemented as written (cosine per token over the feature axis, averaged over "
        "the context tokens); the official helper we read computes F.cosine_similarity over "
        "dim=1 of (1, tokens, features) states, i.e. over the token axis. Eq. 4's mean over the "
        "16 maps is the mean of per-layer means over heads and pixels (each layer weighs the "
        "same); maps are not resized to a common resolution. The attention branch runs the "
        "UNet on its own noisy concept images (not the diffusion batch's), one regularisation "
        "prompt per image rather than one per step, and the reference branch without "
        "gradient (it holds no learnt input). Reproduction: SD v2.1/CLIP are replaced by the "
        "tiny digits model with causal MiniLM states (priorlab.generative.personalize), the "
        "concept by an unseen digit class, CLIP-T/CLIP-I/DINO by ink-mass and classifier "
        "rates; the regularisation prompt set is 6 composed prompts; stage 2 (UNet "
        "fine-tuning) is not run; batch 8 instead of 6. The reproduction scales both official "
        "weights x100 (1.5e-2, 5; their ratio kept): at the official scale each term's gradient "
        "on the embedding is ~0.1% of the denoising gradient in the tiny model, i.e. CoRe would "
        "be inert (measured before any result; the right scale for SD is the official one). "
        "With a causal text encoder the "
        "states of tokens before S* cannot change, so Eq. 3 acts on the tokens after it (EOT "
        "here) and Eq. 4 on all context tokens."),
    claim_scope=(
        "The paper (SD v2.1, 24 concepts, 20 prompts, 32 samples each) reports the best CLIP-T "
        "of five methods with CLIP-I/DINO close to the best, and is preferred in a user study. "
        "Here: CoRe vs plain textual inversion (no plain-TI row in the paper) on a tiny "
        "text-to-image model for a digit class it never saw; editability = thick-minus-thin "
        "rate of composed prompts, identity = classifier rate; embedding stage only."),
    component=core_losses,
    reproduction="p014_core",
    tags=("diffusion", "personalisation", "textual-inversion", "cross-attention", "regularisation"),
))
