"""Paper card: Lion (seed 65), an optimizer; the component is :class:`priorlab.optim.lion.Lion`."""

from __future__ import annotations

import torch
from torch import nn

from priorlab.optim.lion import Lion
from priorlab.registry import Example, MethodCard, Paper, register

USAGE = """\
import torch
from torch import nn
from priorlab.optim.lion import Lion

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))
# lr 3-10x smaller and weight decay 3-10x larger than you would give AdamW
optimizer = Lion(model.parameters(), lr=3e-4, betas=(0.9, 0.99), weight_decay=0.1)
x, y = torch.randn(256, 20), torch.randint(0, 3, (256,))
for step in range(100):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# In any trainer (Lightning, HF Trainer, your own loop): pass Lion wherever AdamW was created.
"""


def _example() -> Example:
    def model_fn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 6, generator=generator),
             torch.randint(0, 3, (16,), generator=generator))
    one = [nn.Parameter(torch.zeros(2))]
    return Example(
        model_fn=model_fn,
        batch=batch,
        loss_fn=nn.functional.cross_entropy,
        optimizer_fn=lambda params: Lion(params, lr=1e-3, weight_decay=0.1),
        adapter_fn=None,
        # lr=0 freezes the weights: no strength at which Lion reduces to a baseline optimizer
        zero_strength=None,
        baseline=None,
        bad_args=(
            lambda: Lion(one, lr=-1e-4),
            lambda: Lion(one, lr=float("nan")),
            lambda: Lion(one, betas=(0.9, 1.0)),
            lambda: Lion(one, betas=(-0.1, 0.99)),
            lambda: Lion(one, betas=(0.9,)),
            lambda: Lion(one, weight_decay=-0.1),
            lambda: Lion(one, weight_decay=float("inf")),
            lambda: Lion([{"params": one, "lr": -1.0}]),
        ),
    )


CARD = register(MethodCard(
    id="lion",
    name="Lion",
    family="T: training dynamics",
    kind="optimizer",
    paper=Paper(
        title="Symbolic Discovery of Optimization Algorithms",
        authors="Xiangning Chen et al.",
        venue="NeurIPS",
        year=2023,
        arxiv="2302.06675",
        code_url="https://github.com/google/automl/tree/master/lion",
        licence="Apache-2.0",
        seed_id=65,
    ),
    summary=("An optimizer found by program search: step each weight by the sign of an "
             "interpolation of momentum and gradient, c = b1*m + (1-b1)*g, "
             "w <- w*(1 - lr*wd) - lr*sign(c), then m <- b2*m + (1-b2)*g. "
             "It keeps only the momentum, half of AdamW's optimizer state."),
    usage=USAGE,
    hyperparameters=(
        "Official defaults (google/automl lion/lion_pytorch.py): lr=1e-4, betas=(0.9, 0.99), "
        "weight_decay=0. The update has magnitude lr in every coordinate, so use an lr 3-10x "
        "smaller than AdamW's and a weight decay 3-10x larger, keeping lr*wd about the same "
        "(README examples: ViT-B/16 lr 1e-4, wd 10 vs AdamW 1e-3, 1; diffusion 3e-5, 0.1 vs "
        "3e-4, 0.01). Change the whole lr schedule by the same ratio. betas=(0.95, 0.98) is "
        "the paper's choice when training is unstable (lower b2 forgets faster). "
        "foreach=None uses the multi-tensor kernels when all parameters share one accelerator "
        "device type, and the per-parameter loop on CPU (faster there)."),
    deviations=(
        "Interpolations are computed with torch.lerp (one pass each) instead of the official "
        "mul-and-add; same rule, results differ only by float rounding. Arguments are checked "
        "more strictly than the official code (non-finite lr, negative or non-finite weight decay, "
        "sparse gradients raise PriorlabError) and a torch._foreach_ multi-tensor path is added "
        "(identical results to the per-parameter loop). Non-finite gradients: the official code "
        "would take sign(NaN) = 0 (no move) and keep the NaN in the momentum, freezing those "
        "weights silently for good; here a step whose gradients hold NaN or infinity is skipped "
        "for its parameter group, weights and momentum unchanged, with a RuntimeWarning naming "
        "the parameter shapes (as AMP's GradScaler skips); nonfinite='raise' raises instead. "
        "load_state_dict runs the constructor's checks and refuses another optimizer's state."),
    claim_scope=(
        "The paper trains ViTs, CLIP-style models, diffusion models and LMs at large scale "
        "(ImageNet, JFT-300M, batch up to 32K) and reports Lion matching or beating AdamW, with "
        "the gain growing with batch size, at half the optimizer memory. Here: an MLP on a "
        "Fashion-MNIST subset at batch 32 and 512, each optimizer with a small lr sweep chosen "
        "on validation; the memory claim is measured exactly; the large-scale gains are not "
        "testable on CPU."),
    component=Lion,
    adapter=None,
    example=_example,
    reproduction="p065_lion",
    tags=("optimizer", "sign", "memory-efficient"),
))
