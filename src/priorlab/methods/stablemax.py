"""Paper cards: StableMax and perpGrad (seed 62, "Grokking at the Edge of Numerical Stability").

Components: :func:`priorlab.nn.stablemax.stablemax_cross_entropy` (with ``stablemax``,
``log_stablemax`` and the ``StableMax`` module) and :class:`priorlab.optim.perpgrad.PerpGrad`
(with ``perp_grad_``); the Softmax Collapse monitor is
:func:`priorlab.diagnostics.collapse.softmax_collapse_fraction`.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.nn.stablemax import stablemax, stablemax_cross_entropy
from priorlab.optim.perpgrad import PerpGrad, perp_grad_
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title="Grokking at the Edge of Numerical Stability",
    authors="Lucas Prieto et al.",
    venue="ICLR",
    year=2025,
    arxiv="2501.04697",
    code_url="https://github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability",
    licence="MIT",
    seed_id=62,
)

CLAIM_SCOPE = (
    "The paper trains an MLP (one-hot pairs, hidden [200, 200], no biases) and a one-layer "
    "transformer on addition/multiplication mod 113 with 40% training data, plus sparse parity "
    "and MNIST subsets, full batch, without weight decay: float32 Softmax CE overfits and hits "
    "Softmax Collapse; StableMax (float64) groks without regularisation (runs of 80,000 "
    "epochs); ⊥AdamW generalises within ~300 epochs. Here: the MLP on addition mod 59 "
    "(113 does not fit the CPU budget), 4,000 epochs for the Softmax and StableMax arms and 300 "
    "for ⊥AdamW; the transformer, sparse-parity and MNIST settings are not run.")

STABLEMAX_USAGE = """\
import torch
from torch import nn
from priorlab.nn.stablemax import stablemax_cross_entropy
from priorlab.diagnostics.collapse import softmax_collapse_fraction

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-25,
                              weight_decay=0.0)
x, y = torch.randn(128, 20), torch.randint(0, 5, (128,))
for step in range(50):
    logits = model(x)
    loss = stablemax_cross_entropy(logits, y)  # computed in float64, returned as float32
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# How much plain Softmax CE would have collapsed on these logits (0 = none):
print(softmax_collapse_fraction(logits.detach(), y))
# In any trainer: use stablemax_cross_entropy wherever F.cross_entropy(logits, y) was used, and
# StableMax(dim=-1) (priorlab.nn.stablemax) where probabilities are needed at inference.
"""

PERPGRAD_USAGE = """\
import torch
from torch import nn
from priorlab.optim.perpgrad import PerpGrad

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64, bias=False), nn.ReLU(), nn.Linear(64, 5, bias=False))
# ⊥AdamW: project each gradient orthogonally to its weight (same norm), then an AdamW step
optimizer = PerpGrad(torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99),
                                       eps=1e-25, weight_decay=0.0))
x, y = torch.randn(128, 20), torch.randint(0, 5, (128,))
for step in range(50):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# In any trainer: wrap the optimizer it builds; schedulers and checkpoints see the base's
# param_groups and state_dict. Inside your own loop, priorlab.optim.perpgrad.perp_grad_(params)
# does the projection in place between backward() and step().
"""


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16, bias=False), nn.ReLU(), nn.Linear(16, 4, bias=False))


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(24, 6, generator=generator), torch.randint(0, 4, (24,), generator=generator)


def _stablemax_example() -> Example:
    logits = torch.randn(4, 3)
    return Example(
        model_fn=_tiny_model,
        batch=_tiny_batch(),
        loss_fn=stablemax_cross_entropy,
        optimizer_fn=lambda params: torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999),
                                                      eps=1e-25, weight_decay=0.0),
        adapter_fn=None,
        # StableMax has no strength knob that reduces it to Softmax CE.
        zero_strength=None,
        baseline=None,
        bad_args=(
            lambda: stablemax_cross_entropy(torch.tensor([[1, 2, 3]]), torch.tensor([0])),
            lambda: stablemax_cross_entropy(logits, torch.tensor([0.0, 1.0, 2.0, 0.0])),
            lambda: stablemax_cross_entropy(logits, torch.tensor([0, 1, 2])),
            lambda: stablemax_cross_entropy(logits, torch.tensor([0, 1, 2, 3])),
            lambda: stablemax_cross_entropy(logits, torch.tensor([0, 1, 2, 0]), reduction="avg"),
            lambda: stablemax_cross_entropy(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0])),
            lambda: stablemax(torch.arange(3)),
        ),
    )


def _perpgrad_example() -> Example:
    one = [nn.Parameter(torch.ones(2))]
    return Example(
        model_fn=_tiny_model,
        batch=_tiny_batch(),
        loss_fn=nn.functional.cross_entropy,
        optimizer_fn=lambda params: PerpGrad(torch.optim.SGD(params, lr=0.1, momentum=0.9)),
        adapter_fn=None,
        # The projection has no strength parameter; its identity case (zero weights) is tested
        # in tests/test_perpgrad.py.
        zero_strength=None,
        baseline=None,
        bad_args=(
            lambda: PerpGrad(nn.Linear(2, 2)),
            lambda: PerpGrad(torch.optim.SGD),
            lambda: PerpGrad(torch.optim.SGD(one, lr=0.1), eps=-1e-30),
            lambda: PerpGrad(torch.optim.LBFGS(one)),
            lambda: perp_grad_([torch.ones(2), 3.0]),
        ),
    )


STABLEMAX_CARD = register(MethodCard(
    id="stablemax",
    name="StableMax cross-entropy",
    family="T: training dynamics",
    kind="function",
    paper=PAPER,
    summary=("A Softmax replacement that cannot collapse in floating point: s(x) = x + 1 for "
             "x >= 0 and 1/(1 - x) for x < 0, normalised, used in the cross-entropy in place of "
             "exp. Growing logits no longer round the true class's probability to exactly 1 "
             "(Softmax Collapse), so training keeps learning and can grok without weight decay."),
    usage=STABLEMAX_USAGE,
    hyperparameters=(
        "None in the function itself; dtype=torch.float64 (the official runs compute the loss in "
        "float64; the result is cast back to the logits' dtype). Official training setting "
        "(utils.py, run_main_experiments.sh): full-batch AdamW lr 0.01, betas (0.9, 0.999), "
        "eps 1e-25, weight decay 0, float32 model, 80,000 epochs on addition mod 113 with 40% "
        "training data. The tiny Adam eps matters: with eps 1e-8 the vanishing late-training "
        "gradients would stop moving the weights."),
    deviations=(
        "The official s(x) adds eps = 1e-30 to 1 - x; since 1 - x >= 1 on that branch it has no "
        "effect and is left out; the negative branch is evaluated on min(x, 0) so the branch "
        "torch.where discards cannot produce inf (and a NaN gradient). log StableMax is computed "
        "as log s - log sum s rather than log(s / sum s) (same value up to rounding). The loss is "
        "returned in the logits' dtype (the official returns float64); gradients are identical. "
        "Inputs are checked (integer or non-finite logits, target shape/range, reduction) and "
        "any (..., C) shape with class-index targets is accepted."),
    claim_scope=CLAIM_SCOPE,
    component=stablemax_cross_entropy,
    adapter=None,
    example=_stablemax_example,
    reproduction="p062_stablemax",
    tags=("loss", "grokking", "numerical-stability", "softmax-collapse"),
))

PERPGRAD_CARD = register(MethodCard(
    id="perpgrad",
    name="perpGrad (⊥Grad, ⊥AdamW)",
    family="T: training dynamics",
    kind="optimizer",
    paper=PAPER,
    summary=("A wrapper optimiser that removes, per parameter tensor, the gradient component "
             "along the weights (g <- g - (w.g / w.w) w, rescaled to the original norm) before the "
             "base optimiser steps. That component only scales the logits up ('naive loss "
             "minimisation'); without it, grokking tasks generalise without the long delay."),
    usage=PERPGRAD_USAGE,
    hyperparameters=(
        "eps = 1e-30 in both denominators (official orthograd.py). The base optimiser keeps its "
        "own settings; the paper's ⊥AdamW uses lr 0.01 (MLP, addition mod 113: 300 epochs; "
        "lr 0.005 / 500 epochs in Figure 6), weight decay 0, betas (0.9, 0.99), eps 1e-25 on "
        "the command line; ⊥SGD uses lr 10 with float64. Caution found in the official script "
        "(grokking_experiments.py): it builds the wrapper with only lr and weight decay and then "
        "loads the plain AdamW's state_dict into the wrapper, which replaces the wrapper's groups "
        "but not the base's, so the paper's ⊥AdamW runs actually used torch's defaults betas "
        "(0.9, 0.999), eps 1e-8 (checked with torch 2.13). Both settings generalise in ~150 "
        "epochs on addition mod 59 here."),
    deviations=(
        "A wrapper around an optimizer instance (as pytorch_optimizer's OrthoGrad) instead of the "
        "official subclass that builds the base from a class; param_groups, state, state_dict "
        "and zero_grad are the base's. step(closure) evaluates the closure before projecting "
        "(the official projects first and hands the closure to the base, whose re-evaluation "
        "would overwrite the projected gradients); LBFGS is rejected for the same reason. "
        "Half-precision tensors are projected in float32 so eps = 1e-30 does not underflow. "
        "A step whose gradients hold NaN or infinity is skipped with a RuntimeWarning (weights "
        "and the base's state unchanged; the official code would project the NaN over the whole "
        "tensor); nonfinite='raise' raises instead. load_state_dict checks the state first."),
    claim_scope=CLAIM_SCOPE,
    component=PerpGrad,
    adapter=None,
    example=_perpgrad_example,
    reproduction="p062_stablemax",
    tags=("optimizer", "wrapper", "gradient-projection", "grokking"),
))
