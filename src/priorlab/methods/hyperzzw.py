"""Paper card: HyperZ·Z·W operator / Terminator (seed 17).

Components: :class:`priorlab.nn.hyperzzw.Terminator` (the network), :class:`SFNEBlock` (one
slow-fast layer), :class:`MAGNet` (the slow net), :func:`hyperzzw_global`,
:class:`LocalHyperZZW`, :func:`hyperzzw_elementwise` (the three operators).
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.nn.hyperzzw import MAGNet, LocalHyperZZW, SFNEBlock, Terminator
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="HyperZ·Z·W Operator Connects Slow-Fast Networks for Full Context Interaction",
    authors="Harvie Zhang",
    venue="arXiv",
    year=2024,
    arxiv="2401.17948",
    code_url="https://github.com/hyperevolnet/Terminator",
    licence="see the official repository",
    seed_id=17,
)

USAGE = """\
import torch
from priorlab.nn.hyperzzw import Terminator

torch.manual_seed(0)
# two slow-fast blocks at full 28x28 resolution, no residuals, no pooling until the head
model = Terminator(num_classes=10, in_channels=1, image_size=28, widths=(8, 16))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-5)
x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
for step in range(3):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# The operators alone: priorlab.nn.hyperzzw.hyperzzw_global(z, W, value) = (z * W) @ value,
# hyperzzw_elementwise(z, W) = z * W * z, LocalHyperZZW(channels, k)(context, value).
"""


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return Terminator(num_classes=3, in_channels=1, image_size=6, widths=(3,),
                      local_sizes=(3,), slow_hidden=4, local_hidden=4)


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(8, 1, 6, 6, generator=generator),
            torch.randint(0, 3, (8,), generator=generator))


def _example() -> Example:
    return Example(
        model_fn=_tiny_model,
        batch=_tiny_batch(),
        loss_fn=nn.functional.cross_entropy,
        optimizer_fn=lambda params: torch.optim.AdamW(params, lr=1e-2),
        adapter_fn=None,
        # An architecture has no strength to switch off; the ResNet baseline is in the repro.
        zero_strength=None,
        baseline=None,
        bad_args=(
            lambda: Terminator(widths=()),
            lambda: Terminator(num_classes=1),
            lambda: Terminator(image_size=0),
            lambda: SFNEBlock(4, 8, size=-3),
            lambda: LocalHyperZZW(4, kernel_size=4),
            lambda: MAGNet(8, 4, omega_0=float("nan")),
            lambda: _tiny_model()(torch.randn(2, 1, 7, 7)),
            lambda: _tiny_model()(torch.full((2, 1, 6, 6), float("nan"))),
        ),
    )


CARD = register(MethodCard(
    id="hyperzzw-terminator",
    name="HyperZ·Z·W operator / Terminator",
    family="S: sparsity, compression, language models",
    kind="module",
    paper=PAPER,
    summary=("Slow networks (coordinate-based implicit MLPs, MAGNet) emit hyper-kernels W; the "
             "fast network multiplies them elementwise with its activations Z (Z·W) and then "
             "uses the product on Z: globally as an image-sized matmul (full context in one "
             "layer), locally as a context-dependent depthwise conv, and elementwise (Z·W·Z). "
             "SFNE blocks concatenate the branches, compress with a 1x1 bottleneck and "
             "standardise; blocks stack at full resolution without residual connections."),
    usage=USAGE,
    hyperparameters=(
        "widths: channels after each SFNE block (official CIFAR config: 12, 36, 72, 144, 288 via "
        "bottleneck factors 4/3/2/2/2 over 5 blocks). image_size: the global hyper-kernel size, "
        "must equal the (square) input size (official 32). local_sizes: local-branch kernel "
        "sizes (official 3, 9, 5, 7). slow_hidden: MAGNet hidden units for the global kernel "
        "(official 64), local_hidden for the local ones (official 32); slow_layers 2 (official "
        "3 in the first block, 2 after); MAGNet omega_0 1, Gamma(6/(l+1), 1) frequency scales. "
        "Official training: Kar3 optimiser, lr 1.2e-3, betas (0.5, 0.95), weight decay 5e-5, "
        "batch 64, cosine with 8 warm-up epochs, 100 epochs."),
    deviations=(
        "Core kept: MAGNet slow nets with coordinate grids and Chang et al. output scaling; "
        "global HyperZ·Z·W (z*W_g)@value with an RGU fast value (official fast+slow RGU pair) "
        "and a channel-mixed value; SiLU-type gate sigmoid(g)*g; context-dependent local "
        "hyper-kernels (pooled, batch-averaged context modulating every MAGNet layer, with the "
        "official fixed S-renormalisation out.detach() + 0.1 normalize(out)); 1x1 bottleneck; "
        "no residuals, no downsampling. Left out: hyper-channel interaction (MAGNet_GC over "
        "the channel axis) and the hyper-interact branch (both omitted for CPU cost; the "
        "channel-mixed branch stands in), the local feedback loss on the slow net, the Kar3 "
        "optimiser (AdamW used), G-IBS group instance-batch standardisation and the local "
        "branch's batch standardisation (instance standardisation inside the branches, "
        "per-sample standardisation over all channels and positions after the bottleneck). As "
        "in the official MAGNet_L, local hyper-kernels use the batch-averaged context, so outputs depend "
        "(slightly) on the other samples of a batch; the reproduction evaluates in chunks of "
        "500. Also left out: concatenation of earlier blocks' outputs (num_concat_pre) and "
        "dropout. Added: an elementwise Z·W·Z branch (the paper's 2E operator; the official "
        "layer does not concatenate it). Two "
        "local branches (3, 5) instead of four; widths far smaller than the official ones."),
    claim_scope=(
        "The paper claims residual-free Terminators beat residual/attention baselines on "
        "pixel-level 1-D and 2-D classification (CIFAR-10/100, STL-10, LRA), with faster "
        "convergence and fewer parameters. Here (issue #11): Fashion-MNIST, two SFNE blocks "
        "(~18.5k parameters) vs a two-stage ResNet of the same size, same steps, 3-point lr grids; "
        "accuracy (non-inferiority) and steps to 70% validation accuracy (superiority)."),
    component=Terminator,
    adapter=None,
    example=_example,
    reproduction="p017_hyperzzw",
    tags=("architecture", "hypernetwork", "implicit-kernel", "no-residual"),
))
