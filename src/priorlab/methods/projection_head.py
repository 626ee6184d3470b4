"""Projection head (seed 38): train encoder + head with a contrastive loss, keep the encoder."""

from __future__ import annotations

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.contrastive import spectral_contrastive_loss, supcon_loss
from priorlab.registry import Example, MethodCard, Paper, register


class EncoderWithHead(nn.Module):
    """``forward`` = ``head(encoder(x))`` (what the loss sees); ``embed`` = pre-projection features."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        if not isinstance(encoder, nn.Module) or not isinstance(head, nn.Module):
            raise PriorlabError("encoder and head must both be nn.Module instances")
        self.encoder, self.head = encoder, head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def supcon_head(embed_dim: int, feat_dim: int = 128) -> nn.Sequential:
    """SupCon's 'mlp' projection head: Linear(d, d), ReLU, Linear(d, feat_dim)."""
    for name, value in (("embed_dim", embed_dim), ("feat_dim", feat_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PriorlabError(f"{name} must be a positive integer, got {value!r}")
    return nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(),
                         nn.Linear(embed_dim, feat_dim))


USAGE = """\
import torch
from priorlab.functional.contrastive import supcon_loss
from priorlab.methods.projection_head import EncoderWithHead, supcon_head

torch.manual_seed(0)
x, coarse = torch.randn(128, 20), torch.randint(0, 2, (128,))
encoder = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU())
model = EncoderWithHead(encoder, supcon_head(32, feat_dim=16))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(20):
    idx = torch.randint(0, 128, (64,))
    loss = supcon_loss(model(x[idx]), coarse[idx], temperature=0.07)
    opt.zero_grad(); loss.backward(); opt.step()
features = model.embed(x)     # use the PRE-projection features downstream; drop the head
# in priorlab.train.fit: loss_fn=lambda out, y: supcon_loss(out, y), no adapter
"""


def _example() -> Example:
    def model_fn():
        torch.manual_seed(0)
        return EncoderWithHead(nn.Sequential(nn.Linear(6, 16), nn.ReLU()), supcon_head(16, 8))

    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(8, 6, generator=gen), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]))

    def adam(params):
        return torch.optim.Adam(params, lr=1e-2)

    return Example(
        model_fn=model_fn, batch=batch, loss_fn=lambda out, y: supcon_loss(out, y, 0.1),
        optimizer_fn=adam,
        bad_args=(lambda: supcon_loss(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), -0.1),
                  lambda: supcon_loss(torch.randn(4, 3), torch.tensor([0.0, 1.0, 0.0, 1.0])),
                  lambda: supcon_loss(torch.randn(4, 3), torch.tensor([0, 1, 0])),
                  lambda: supcon_loss(torch.full((4, 3), float("nan")), torch.tensor([0, 1, 0, 1])),
                  lambda: spectral_contrastive_loss(torch.randn(4, 3), torch.randn(5, 3)),
                  lambda: supcon_head(0)),
    )


register(MethodCard(
    id="projection-head",
    name="Projection head (pre-projection features) with SupCon",
    family="N: noisy labels, distillation, robustness",
    kind="function",
    paper=Paper(
        title="Investigating the Benefits of Projection Head for Representation Learning",
        authors="Yihao Xue et al.", venue="ICLR", year=2024, arxiv="2403.11391",
        code_url="", licence="no official code", seed_id=38),
    summary=("Train encoder + projection head with a contrastive loss (SupCon or spectral), then "
             "discard the head: the pre-projection features are less specialised to the "
             "training objective and keep features the loss does not need (e.g. fine classes "
             "under coarse labels), so they transfer better than the post-projection ones."),
    usage=USAGE,
    hyperparameters=("SupCon (official SupContrast): temperature 0.07, base_temperature 0.07, "
                     "'mlp' head Linear(d, d)-ReLU-Linear(d, 128), features l2-normalised. "
                     "Spectral contrastive loss: no hyperparameter. Temperature matters most: "
                     "lower values specialise the projection more."),
    deviations=("No official code for Xue et al.; SupCon follows SupContrast's SupConLoss "
                "(anchors without positives add 0 to the mean). The spectral loss is the "
                "paper's empirical estimate without the official code's optional norm clipping "
                "(mu). Reproduction: MLP encoder on Fashion-MNIST with a single un-augmented "
                "view instead of ResNets on CIFAR-100 with augmentation."),
    claim_scope=("Paper: theory for linear / two-layer models plus ResNet experiments on "
                 "CIFAR-10/100 (SupCon on coarse CIFAR-100 superclasses, probing fine "
                 "classes), UrbanCars and shifted ImageNet. Here: SupCon on 4 coarse "
                 "Fashion-MNIST groups, probing the 10 fine classes pre vs post projection; we "
                 "test the direction and a 2-point minimum, not the paper's numbers."),
    component=supcon_loss,
    example=_example,
    reproduction="p038_projection_head",
    tags=("contrastive learning", "representation learning", "transfer"),
))
