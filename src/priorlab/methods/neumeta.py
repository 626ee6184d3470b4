"""Paper card: NeuMeta — Neural Metamorphosis (seed 36).

Component: :class:`priorlab.nn.neumeta.NeuMeta` (the weight INR), with the target family
:class:`~priorlab.nn.neumeta.MorphableMLP`, the intra-model smoothing
:func:`~priorlab.nn.neumeta.smooth_permutation`, the width sampler
:func:`~priorlab.nn.neumeta.sample_width` and the reconstruction loss
:func:`~priorlab.nn.neumeta.weighted_regression_loss`. No adapter: the INR *is* the trained
model, and its training loop (a width per batch) is a few lines of plain PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from priorlab.nn.neumeta import MorphableMLP, NeuMeta, sample_width, training_widths
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Neural Metamorphosis",
    authors="Xingyi Yang et al.",
    venue="ECCV",
    year=2024,
    arxiv="2410.11878",
    code_url="https://github.com/Adamdad/neumeta",
    licence="no licence file in the official repository",
    seed_id=36,
)

USAGE = """\
import torch
import torch.nn.functional as F
from priorlab.nn.neumeta import (MorphableMLP, NeuMeta, sample_width, smooth_permutation,
                                 training_widths, weighted_regression_loss)

torch.manual_seed(0)
family = MorphableMLP(in_features=20, out_features=3, depth=2)    # 20 -> w -> w -> 3
inr = NeuMeta(family.num_tensors, hidden=32, num_layers=3, num_freqs=4, norm=16,
              kernel_sizes=family.kernel_sizes)
optimizer = torch.optim.AdamW(inr.parameters(), lr=1e-3, weight_decay=0.0)
x, y = torch.randn(256, 20), torch.randint(0, 3, (256,))
widths = training_widths(8, 16, step=4)                            # 8, 12, 16
# optional: a trained full-width network, its hidden units reordered for smoothness
teacher = [p.detach() for p in family.parameters_of(smooth_permutation(family.build(16)))]
gen = torch.Generator().manual_seed(0)
for step in range(20):
    width = sample_width(widths, gen)                              # one width per batch
    params = inr(family.shapes(width), coordinate_noise=1.0, generator=gen)
    loss = F.cross_entropy(family.forward(x, params), y)
    loss = loss + 1e-4 * sum(p.norm() for p in params)
    if width == 16:
        loss = loss + weighted_regression_loss(params, teacher)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
with torch.no_grad():                                              # any width, also unseen
    net10 = family.build(10, inr(family.shapes(10)))               # a plain nn.Sequential
"""


def _tiny_family() -> MorphableMLP:
    return MorphableMLP(in_features=6, out_features=4, depth=2)


class _MorphingModel(torch.nn.Module):
    """The INR seen as a model: it generates the width-``width`` network, then runs it."""

    def __init__(self, width: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.family, self.width = _tiny_family(), width
        self.inr = NeuMeta(self.family.num_tensors, hidden=8, num_layers=2, num_freqs=2, norm=8,
                           kernel_sizes=self.family.kernel_sizes)

    def forward(self, x):
        return self.family.forward(x, self.inr(self.family.shapes(self.width)))


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(24, 6, generator=generator), torch.randint(0, 4, (24,), generator=generator)


def _example() -> Example:
    family = _tiny_family()
    inr = NeuMeta(family.num_tensors, hidden=8, num_layers=2, num_freqs=2, norm=8,
                  kernel_sizes=family.kernel_sizes)
    return Example(
        model_fn=_MorphingModel,
        batch=_tiny_batch(),
        loss_fn=F.cross_entropy,
        optimizer_fn=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0),
        adapter_fn=None,
        zero_strength=None,  # no strength knob: the INR replaces the network's parameters
        baseline=None,
        bad_args=(
            lambda: NeuMeta(0),
            lambda: NeuMeta(6, hidden=0),
            lambda: NeuMeta(6, norm=float("nan")),
            lambda: NeuMeta(2, kernel_sizes=[1]),
            lambda: inr(family.shapes(5)[:-1]),
            lambda: inr(family.shapes(5), coordinate_noise=-1.0),
            lambda: inr([(5, 6)] + family.shapes(5)[1:]),  # input layer needs a kernel axis
            lambda: family.shapes(0),
            lambda: MorphableMLP(6, 4, depth=0),
            lambda: sample_width([]),
            lambda: training_widths(8, 4),
        ),
    )


CARD = register(MethodCard(
    id="neumeta",
    name="NeuMeta (Neural Metamorphosis)",
    family="F: neural fields",
    kind="module",
    paper=PAPER,
    summary=("A neural implicit function maps a weight's coordinate in a network of any size "
             "(tensor, row/size, column/size, sizes) to its value, w = F_k(gamma(coord)) / "
             "fan_in, so one trained INR emits the weights of a network of any width, also of "
             "widths never sampled in training. Trained on a width drawn per batch, from a "
             "pretrained network whose hidden units are reordered along a shortest "
             "Hamiltonian path (smooth in the row coordinate), with noise on the coordinates."),
    usage=USAGE,
    hyperparameters=(
        "INR (official Fashion-MNIST LeNet config): one residual ReLU MLP per parameter tensor, "
        "hidden 256, 8 layers, residual scale 0.1, 16 positional-encoding frequencies 2^f pi, "
        "norm = the largest width (32). Training: AdamW lr 1e-3, weight decay 0, batch 128, "
        "200 epochs, EMA 0.995 of the INR (used for evaluation); training widths 8..32 (every "
        "width; configs may set an interval); coordinate noise 1.0 (uniform, one unit wide); "
        "loss = CE + 1e-4 sum_k ||w_k||_2 + 1.0 x the magnitude-weighted reconstruction of the "
        "permuted pretrained weights when the pretrained width is drawn, its weight decayed "
        "linearly to 0 over 50 of 200 epochs. Coordinate noise and the permutation matter most "
        "(paper's ablations); more INR capacity and epochs help."),
    deviations=(
        "Target family: an MLP (Linear layers) instead of LeNet/ResNets; its input layer is "
        "emitted like the official conv kernels (one vector of in_features values per hidden "
        "unit, the pixels being one input channel's kernel, divided by that channel count 1), "
        "because an INR over (unit, pixel) coordinates with few frequencies cannot give units "
        "distinct receptive fields. Conv (4-D) targets are not implemented. Coordinate noise is "
        "added to the row/column indices only; the official adds it to all six raw coordinates, "
        "which also perturbs the tensor id used to route a coordinate to its MLP. Shortest "
        "Hamiltonian paths by nearest neighbour from every start + 2-opt instead of fast_tsp. "
        "The reproduction uses a smaller INR and far fewer steps (CPU); see its setting."),
    claim_scope=(
        "The paper trains INRs for 200 epochs on GPUs for LeNet (MNIST/Fashion-MNIST), "
        "ResNet-20/56 (CIFAR-10/100), ResNet-18 (ImageNet), a U-Net (VOC segmentation) and VAEs, "
        "and reports that generated networks keep full-size performance down to 75% "
        "compression, beating pruning without fine-tuning and close to individually trained "
        "networks. Here: a 14x14 Fashion-MNIST MLP, unseen widths 10-30 of a width-32 family, "
        "against individually trained networks and magnitude pruning, on a CPU budget."),
    component=NeuMeta,
    adapter=None,
    example=_example,
    reproduction="p036_neumeta",
    tags=("hypernetwork", "implicit-neural-representation", "any-width", "compression"),
))
