"""Paper card: regularising internal solver heuristics of neural ODEs (seed 45).

Components: :func:`priorlab.functional.solver_regularisation.stats_penalty` (the regulariser,
a pure function of a solve's step statistics) on top of :class:`priorlab.nn.neural_ode.NeuralODE`
(the adaptive solver that exposes them). No adapter: the penalty enters the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from priorlab.functional.solver_regularisation import (
    global_solver_penalty, regularised_loss, stats_penalty,
)
from priorlab.nn.neural_ode import NeuralODE, TimeMLP, solve
from priorlab.registry import Example, MethodCard, Paper, register

PAPER = Paper(
    title=("Opening the Blackbox: Accelerating Neural Differential Equations by Regularizing "
           "Internal Solver Heuristics"),
    authors="Avik Pal et al.",
    venue="ICML",
    year=2021,
    arxiv="2105.03918",
    code_url="https://github.com/avik-pal/RegNeuralDE.jl",
    licence="MIT",
    seed_id=45,
)

USAGE = """\
import torch
from priorlab.nn.neural_ode import NeuralODE, TimeMLP
from priorlab.functional.solver_regularisation import regularised_loss, stats_penalty

torch.manual_seed(0)
ode = NeuralODE(TimeMLP(8, 16), rtol=1e-4, atol=1e-4)  # adaptive Dormand-Prince on t in [0, 1]
readout = torch.nn.Linear(8, 3)
optimizer = torch.optim.SGD([*ode.parameters(), *readout.parameters()], lr=0.1, momentum=0.9)
x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
for step in range(5):
    task = torch.nn.functional.cross_entropy(readout(ode(x)), y)
    # mean over the accepted steps of EEst * dt ("stiffness" for the stiffness estimate)
    loss = regularised_loss(task, stats_penalty(ode.last_stats, "error"), strength=10.0)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("NFE of the last solve:", ode.last_stats.nfe)
# In any trainer: solve with priorlab.nn.neural_ode.solve (or NeuralODE) and add
# strength * stats_penalty(stats) to the loss; gradients flow through the solver's steps.
"""


class _ClassifierNODE(nn.Module):
    """Tiny NODE classifier whose forward also leaves the penalty on the module."""

    def __init__(self):
        super().__init__()
        self.ode = NeuralODE(TimeMLP(4, 8), rtol=1e-4, atol=1e-4)
        self.readout = nn.Linear(4, 3)

    def forward(self, x):
        out = self.readout(self.ode(x))
        self.penalty = stats_penalty(self.ode.last_stats)
        return out


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return _ClassifierNODE()


def _tiny_batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def _example() -> Example:
    return Example(
        model_fn=_tiny_model,
        batch=_tiny_batch(),
        loss_fn=nn.functional.cross_entropy,
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        adapter_fn=None,
        # the penalty lives in the loss (regularised_loss(task, penalty, 0) is the task loss
        # itself, tested in tests/test_solver_regularisation.py)
        zero_strength=None,
        baseline=None,
        bad_args=(
            lambda: stats_penalty(solve(lambda t, y: -y, torch.ones(1, 1))[1], "stiff"),
            lambda: global_solver_penalty([], []),
            lambda: regularised_loss(torch.tensor(1.0), torch.tensor(1.0), -1.0),
            lambda: NeuralODE(TimeMLP(2, 2), rtol=0.0),
            lambda: solve(lambda t, y: -y, torch.ones(2), 1.0, 0.0),
        ),
    )


CARD = register(MethodCard(
    id="solver-heuristics",
    name="Solver-heuristic regularisation (ERNODE / SRNODE)",
    family="F: neural fields, inverse problems, solvers",
    kind="function",
    paper=PAPER,
    summary=("Adaptive solvers already estimate, at every accepted step, how hard the dynamics "
             "are to integrate: the local error estimate EEst and a stiffness estimate. Adding "
             "lambda * mean_k(EEst_k dt_k) over the forward solve's accepted steps to the loss "
             "(or the stiffness estimate times dt) and backpropagating through the solver "
             "steers training towards dynamics that need fewer steps."),
    usage=USAGE,
    hyperparameters=(
        "strength lambda: the official MNIST NODE anneals it exponentially from 100 to 10 over "
        "training (annealed_strength); its useful range depends on the tolerance and the "
        "dynamics (digits at tolerance 1e-6: start 10 for the error and 1 for the stiffness "
        "estimate, picked on validation data from {0.1, 1, 10}; 100 cost ~7 accuracy points). "
        "heuristic: "
        "'error' (default, type error_est) or 'stiffness' (stiff_est). rtol/atol of the solver "
        "(official 1.4e-8 with Tsit5)."),
    deviations=(
        "Our own compact Dormand–Prince 5(4) in PyTorch (the official code uses Julia's Tsit5 "
        "through DifferentialEquations.jl): torchdiffeq 0.2.5 does not expose per-step error "
        "estimates or accepted steps, torchode 1.0.1 reports counts but no per-step estimates. "
        "The step-size controller uses a plain (non-PI) rule and works on detached values, as "
        "the official dt is untracked. Stiffness estimate: |k7 - k6| / |y1 - g6| (the "
        "Dormand–Prince heuristic) instead of Tsit5's eigen_est. The batch is one system (one "
        "step size), as officially. Gradients by backprop through the solver (the official "
        "discrete sensitivities). Tolerance 1e-6 and 8x8 digits instead of 1.4e-8 and MNIST."),
    claim_scope=(
        "The paper reports about halved prediction time and NFE at similar accuracy, with "
        "training time also reduced, for MNIST NODE classifiers, latent ODEs, FFJORD and neural "
        "SDEs, on GPUs at tight tolerance. Here: a NODE classifier on sklearn digits on CPU, "
        "plain vs error- vs stiffness-regularised; the other model families are not run."),
    component=stats_penalty,
    adapter=None,
    example=_example,
    reproduction="p045_solver_heuristics",
    tags=("neural-ode", "regularisation", "adaptive-solver", "inference-cost"),
))
