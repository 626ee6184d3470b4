"""Paper card: Weight Compander (seed 25).

Component: :func:`priorlab.nn.compander.apply_weight_compander` (the parametrisation class is
:class:`priorlab.nn.compander.WeightCompander`). No adapter: a parametrisation needs no hooks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from priorlab.nn.compander import WeightCompander, apply_weight_compander
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Weight Compander: A Simple Weight Reparameterization for Regularization",
    authors="Rinor Cakaj et al.",
    venue="IJCNN",
    year=2023,
    arxiv="2306.16993",
    code_url="",
    licence="no official code",
    seed_id=25,
)

USAGE = """\
import torch
from torch import nn
from priorlab.nn.compander import apply_weight_compander

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
# every Linear/Conv weight becomes alpha * tanh(beta * w / alpha); biases are left alone
apply_weight_compander(model, alpha=4.0, beta=2.0)  # alpha in initial stds of each tensor
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
x, y = torch.randn(128, 20), torch.randint(0, 5, (128,))
for step in range(50):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# In any trainer: call apply_weight_compander(model) before building the optimizer; checkpoints
# then hold the raw weights (parametrizations.weight.original). For export,
# priorlab.nn.compander.remove_weight_compander(model) bakes the effective weights in.
"""


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    apply_weight_compander(model, alpha=4.0, beta=2.0)
    return model


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(24, 6, generator=generator), torch.randint(0, 4, (24,), generator=generator)


def _example() -> Example:
    plain = nn.Sequential(nn.Linear(3, 3))
    return Example(
        model_fn=_tiny_model,
        batch=_tiny_batch(),
        loss_fn=nn.functional.cross_entropy,
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        adapter_fn=None,
        # The compander lives in the model, which the contract shares between both runs; its
        # identity case (alpha = inf, beta = 1) is tested in tests/test_compander.py.
        zero_strength=None,
        baseline=None,
        bad_args=(
            lambda: WeightCompander(alpha=0.0),
            lambda: WeightCompander(alpha=-1.0),
            lambda: WeightCompander(beta=float("nan")),
            lambda: WeightCompander(beta=math.inf),
            lambda: WeightCompander(alpha=math.inf, learnable=True),
            lambda: WeightCompander(alpha="big"),
            lambda: apply_weight_compander(nn.Sequential(nn.ReLU())),
            lambda: apply_weight_compander(plain, module_types=(str,)),
            lambda: apply_weight_compander(_tiny_model()),
        ),
    )


CARD = register(MethodCard(
    id="weight-compander",
    name="Weight Compander (WC)",
    family="T: training dynamics",
    kind="parametrisation",
    paper=PAPER,
    summary=("Each conv/linear weight is used through an odd nonlinear map w_eff = f(w) that "
             "saturates for large |w| (no weight can dominate) and is steeper than identity "
             "near zero (small weights get larger gradients and are pushed away from zero). "
             "Here f(w) = alpha tanh(beta w / alpha), via torch.nn.utils.parametrize."),
    usage=USAGE,
    hyperparameters=(
        "alpha: saturation level of |w_eff|; with relative=True (default) in units of each "
        "tensor's initial std, default 4. beta: slope at zero (expansion of small weights), "
        "default 2; beta > 1 expands, and the effective learning rate of near-zero weights "
        "grows by beta^2. alpha = inf with beta = 1 is the identity. learnable=True trains "
        "alpha and beta (log-parametrised) with the network, the paper's extension; keep them "
        "out of weight decay. module_types (Linear, Conv1/2/3d by default) and exclude choose "
        "the weights. The paper gives no defaults we could retrieve."),
    deviations=(
        "The paper's exact f and its default hyperparameters could not be retrieved (no "
        "official code; the text was not reachable from here). f(w) = alpha tanh(beta w / "
        "alpha) is our choice with the stated properties: odd, bounded (restricts magnitude), "
        "slope beta > 1 at zero (forces weights away from zero), two hyperparameters, learnable "
        "variant. alpha is scaled per tensor by its initial std so one setting fits all layer "
        "widths. Registering the compander keeps the current weights as effective weights "
        "(right_inverse), so the effective initialisation is the layer's default one."),
    claim_scope=(
        "The paper claims (abstract) that adding WC to standard regularisation methods improves "
        "the performance of deep networks on image classification, and that trained weights "
        "then show the companding effect (fewer weights at zero, bounded magnitudes); its "
        "networks, datasets and numbers could not be checked from here. Here: a SmallCNN on "
        "200 sklearn digits, +/- compander, +/- weight decay, 20 seeds; large networks, "
        "augmentation and the learnable variant are not run."),
    component=apply_weight_compander,
    adapter=None,
    example=_example,
    reproduction="p025_compander",
    tags=("parametrisation", "regularisation", "weight-distribution"),
))
