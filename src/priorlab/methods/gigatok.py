"""Paper card: GigaTok, semantic regularisation for scaling VQ tokenizers (seed 15).

Components: :class:`priorlab.functional.tokenizer_regularisers.SemanticRegulariser` (projector +
frozen feature model + cosine alignment, :func:`semantic_alignment_loss`) and
:func:`codebook_entropy_loss`; the tokenizer they train is :class:`priorlab.generative.tokenizer.VQTokenizer`
(with :func:`~priorlab.generative.tokenizer.vq_loss` / ``train_tokenizer``) and the downstream
generator :class:`priorlab.generative.autoregressive.TokenTransformer`.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.functional.tokenizer_regularisers import SemanticRegulariser, codebook_entropy_loss
from priorlab.generative.tokenizer import VQTokenizer, vq_loss
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="GigaTok: Scaling Visual Tokenizers to 3 Billion Parameters for Autoregressive Image Generation",
    authors="Tianwei Xiong, Jun Hao Liew, Zilong Huang, Jiashi Feng, Xihui Liu",
    venue="ICCV",
    year=2025,
    arxiv="2504.08736",
    code_url="https://github.com/SilentView/GigaTok",
    licence="see the official repository",
    seed_id=15,
)

USAGE = """\
import torch
from torch import nn
from priorlab.functional.tokenizer_regularisers import SemanticRegulariser
from priorlab.generative.tokenizer import VQTokenizer, train_tokenizer

torch.manual_seed(0)
images = torch.rand(32, 1, 16, 16)
tokenizer = VQTokenizer(width=8, codebook_size=16, code_dim=4)
# the frozen feature model maps images to a (N, C, h, w) map (DINOv2 patch features in the paper)
teacher = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4))
semantic = SemanticRegulariser(tokenizer.feature_channels, teacher, teacher_channels=12)
history = train_tokenizer(tokenizer, images, steps=3, batch_size=8, semantic=semantic,
                          semantic_weight=0.5, entropy_weight=0.0)
tokens = tokenizer.tokenize(images)          # (32, 16) ids for an AR generator
print(tokens.shape, tokenizer.decode(tokens).shape, history["semantic"][-1])
"""


class _RegularisedTokenizer(nn.Module):
    """Tokenizer + regulariser in one module, so the training contract sees every parameter."""

    def __init__(self, semantic_weight: float):
        super().__init__()
        torch.manual_seed(0)
        self.tokenizer = VQTokenizer(width=4, codebook_size=8, code_dim=4)
        teacher = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.AvgPool2d(4))
        self.semantic = SemanticRegulariser(self.tokenizer.feature_channels, teacher, 6)
        self.semantic_weight = semantic_weight

    def forward(self, images):
        loss, _ = vq_loss(self.tokenizer, images, semantic=self.semantic,
                          semantic_weight=self.semantic_weight)
        return loss


def _example() -> Example:
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    sgd = lambda params: torch.optim.SGD(params, lr=0.05)  # noqa: E731
    return Example(
        model_fn=lambda: _RegularisedTokenizer(0.5),
        batch=(images, images),
        loss_fn=lambda loss, _target: loss,
        optimizer_fn=sgd,
        bad_args=(
            lambda: VQTokenizer(width=0),
            lambda: VQTokenizer(image_size=28),
            lambda: SemanticRegulariser(0, nn.Identity(), 4),
            lambda: codebook_entropy_loss(torch.rand(4, 3), temperature=0.0),
            lambda: VQTokenizer().lookup(torch.tensor([[99] * 16])),
        ),
    )


CARD = register(MethodCard(
    id="gigatok",
    name="GigaTok (semantic regularisation for VQ tokenizers)",
    family="G: generative models, editing and attacks",
    kind="module",
    paper=PAPER,
    summary=("While training a VQ image tokenizer, a small projector maps the decoder's "
             "intermediate features to a frozen pretrained model's feature space and a cosine "
             "loss pulls them together (semantic regularisation), so the latent space stays "
             "semantically organised as the tokenizer grows and downstream autoregressive "
             "generators learn it more easily; an entropy loss on soft code assignments keeps "
             "large codebooks in use."),
    usage=USAGE,
    hyperparameters=(
        "Official: semantic weight lambda 0.5 (paper Sec. 3), feature model DINOv2-B, features "
        "taken from the middle of the decoder; entropy loss for the largest tokenizers; l2-"
        "normalised 8-d codes, 16,384 codes; commitment 0.25. Here: semantic_weight 0.5, a "
        "1x1-conv MLP projector (hidden = teacher channels, SiLU), the decoder's 4x4 map after "
        "its stem, entropy temperature 0.01 (weight 0 unless set), 64 codes of 8 dims."),
    deviations=(
        "The frozen feature model is a small digits classifier trained here (its 4x4 conv map), "
        "not DINOv2; the tokenizer is a 16x16 conv VQ-VAE without the paper's 1D/2D transformer "
        "blocks, GAN, perceptual loss or lecam; codebook learnt by loss with a dead-code restart "
        "(every 25 steps, codes used below 10% of a fair share are reset to current latents). "
        "The teacher features are centred per channel over the batch before the cosine "
        "(center_teacher=True): a ReLU trunk's features are all non-negative, so uncentred "
        "cosines are near 1 and, in our first pilot, the projector alone drove the loss to "
        "0.016 without constraining the decoder; DINOv2's layer-normed features need no such "
        "step. The official code was not in the searchable index, so lambda = 0.5 is our "
        "reading of the paper (not re-checked against its configs) and the projector shape "
        "is ours."),
    claim_scope=(
        "The paper: at ImageNet 256x256, semantic regularisation improves gFID of LlamaGen AR "
        "models at similar rFID, and lets gFID keep improving as the tokenizer scales to 3B. "
        "Here: two tiny tokenizer widths on 16x16 digits, a classifier-feature Fréchet distance, "
        "a 2-layer AR transformer."),
    component=SemanticRegulariser,
    adapter=None,
    example=_example,
    reproduction="p015_gigatok",
    tags=("tokenizer", "vq-vae", "autoregressive", "generative", "regulariser"),
))
