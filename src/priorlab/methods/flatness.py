"""Paper card (seed 34): watch flatness, not just the loss — a Hessian-trace monitor.

Liu, Xie, Li & Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias Matters for
Language Models", ICML 2023, arXiv:2210.14199. Among language models with the same (minimal)
pre-training loss, the flatter ones (smaller trace of the pre-training loss's Hessian) transfer
better, and SGD keeps lowering the trace after the loss has converged.
:class:`HessianTraceMonitor` records Tr(H) on fixed evaluation batches every ``every`` steps of
any training loop (Hutchinson's estimator, :func:`priorlab.diagnostics.hutchinson_trace`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.diagnostics.hessian import as_batches, hutchinson_trace
from priorlab.errors import PriorlabError
from priorlab.hooks import Adapter, StepContext
from priorlab.registry import Example, MethodCard, Paper, register


class HessianTraceMonitor(Adapter):
    """Records Hutchinson's estimate of Tr(H) of ``loss_fn`` on ``batches`` every ``every`` steps.

    The same ``num_samples`` probe vectors (drawn from ``seed``) are used at every measurement,
    so differences between measurements carry less noise than the estimates themselves and a
    resumed run measures exactly what an uninterrupted one would. Training is untouched: the
    monitor reads the model after the optimizer step and writes nothing but its history
    (``history["step"]``, ``["trace"]``, ``["std_error"]``) and ``ctx.extra["hessian_trace"]``.
    Use :meth:`measure` directly from a loop of your own.
    """

    def __init__(self, loss_fn, batches, *, every: int = 100, num_samples: int = 20,
                 seed: int = 0, params=None):
        if not callable(loss_fn):
            raise PriorlabError(f"loss_fn must be callable as loss_fn(outputs, targets), got "
                                f"{type(loss_fn).__name__}")
        for name, value in (("every", every), ("num_samples", num_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PriorlabError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PriorlabError(f"seed must be an integer, got {seed!r}")
        self.loss_fn, self.batches = loss_fn, as_batches(batches)
        self.every, self.num_samples, self.seed, self.params = every, num_samples, seed, params
        self.history: dict[str, list[float]] = {"step": [], "trace": [], "std_error": []}

    def measure(self, model: nn.Module, step: int) -> float:
        """Estimate Tr(H) now, record it under ``step`` and return it."""
        estimate = hutchinson_trace(model, self.loss_fn, self.batches, num_samples=self.num_samples,
                                    seed=self.seed, params=self.params)
        self.history["step"].append(float(step))
        self.history["trace"].append(estimate.trace)
        self.history["std_error"].append(estimate.std_error)
        return estimate.trace

    def after_step(self, ctx: StepContext) -> None:
        done = ctx.step + 1  # fit() counts steps from 0 and advances after the hooks
        if done % self.every == 0:
            ctx.extra["hessian_trace"] = self.measure(ctx.model, done)

    def state_dict(self) -> dict:
        return {key: list(values) for key, values in self.history.items()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != set(self.history) or \
                len({len(v) for v in state.values()}) != 1:
            raise PriorlabError("HessianTraceMonitor state must hold equally long 'step', 'trace' "
                                "and 'std_error' lists, as state_dict() returns")
        self.history = {key: [float(x) for x in values] for key, values in state.items()}


USAGE = """\
import torch
import torch.nn.functional as F
from priorlab.methods.flatness import HessianTraceMonitor

torch.manual_seed(0)
x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.5)
monitor = HessianTraceMonitor(F.cross_entropy, (x[:128], y[:128]), every=50, num_samples=10)
for step in range(200):
    i = torch.randint(0, 256, (32,))
    loss = F.cross_entropy(model(x[i]), y[i])
    opt.zero_grad(); loss.backward(); opt.step()
    if (step + 1) % monitor.every == 0:
        monitor.measure(model, step + 1)
print(monitor.history["trace"])   # Tr(H) of the loss on the fixed batch, every 50 steps
# in priorlab.train.fit: adapters=[HessianTraceMonitor(loss_fn, eval_batches, every=50)]
"""


def _example() -> Example:
    def model_fn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))

    def sgd(params):
        return torch.optim.SGD(params, lr=0.1)

    def monitor():
        return HessianTraceMonitor(F.cross_entropy, batch, every=1, num_samples=4)

    return Example(
        model_fn=model_fn, batch=batch, loss_fn=F.cross_entropy, optimizer_fn=sgd,
        adapter_fn=monitor,
        # a monitor must not change training: monitored and unmonitored runs are identical
        zero_strength=(sgd, monitor, F.cross_entropy),
        baseline=(sgd, None, F.cross_entropy),
        bad_args=(lambda: HessianTraceMonitor(F.cross_entropy, batch, every=0),
                  lambda: HessianTraceMonitor(F.cross_entropy, batch, num_samples=0),
                  lambda: HessianTraceMonitor("cross_entropy", batch),
                  lambda: HessianTraceMonitor(F.cross_entropy, []),
                  lambda: monitor().load_state_dict({"step": [1.0]})),
    )


CARD = register(MethodCard(
    id="trace-monitor",
    name="Hessian-trace (flatness) monitor",
    family="T: training dynamics",
    kind="adapter",
    paper=Paper(
        title="Same Pre-training Loss, Better Downstream: Implicit Bias Matters for Language Models",
        authors="Hong Liu et al.", venue="ICML", year=2023, arxiv="2210.14199", code_url="",
        licence="no official code", seed_id=34),
    summary=("Pre-training loss does not tell models apart once it is minimal; flatness does. "
             "The monitor records Tr(H) of the loss on fixed evaluation batches every k steps "
             "(Hutchinson: Tr(H) = E[z^T H z], Rademacher z, the same probes each time), so a "
             "run can be continued past convergence while watching the trace fall."),
    usage=USAGE,
    hyperparameters=(
        "every: steps between measurements (each costs num_samples Hessian-vector products on "
        "the evaluation batches, about 2 backward passes each). num_samples=20: the standard "
        "error falls as 1/sqrt(num_samples); fixed probes make the trend cleaner than single "
        "estimates. Measure the pre-training loss itself (the paper's flatness is the trace of "
        "the population pre-training loss's Hessian): use large or many evaluation batches."),
    deviations=(
        "No official code was found. The paper measures Tr(H) of the pre-training loss of "
        "transformers on PCFG/OPT-generated text; the monitor is the generic version (any model, "
        "loss and batches). Probes are fixed across measurements (common random numbers), a "
        "choice of ours that keeps the trend readable."),
    claim_scope=(
        "The paper pre-trains BERT/GPT-style transformers on synthetic PCFG and OPT-generated "
        "data and on real text, evaluating fine-tuned downstream accuracy. Here: an MLP "
        "next-token model on a hidden Markov source whose optimal loss is known exactly, "
        "continued past convergence with constant-lr SGD; downstream = a linear probe of the "
        "hidden state from the penultimate features, scored exactly over all windows."),
    component=HessianTraceMonitor,
    adapter=HessianTraceMonitor,
    example=_example,
    reproduction="p034_flatness",
    tags=("flatness", "hessian", "implicit-bias", "monitor"),
))
