"""Reproduction of "Grokking at the Edge of Numerical Stability" (seed 62): StableMax and perpGrad.

Modular addition with the official MLP (one-hot pairs, two hidden layers of 200, ReLU, no
biases), full-batch AdamW without weight decay, float32 model. Three arms:

* ``softmax_ce``: float32 Softmax cross-entropy, the baseline the paper says overfits, runs
  into Softmax Collapse and never generalises without regularisation;
* ``stablemax_ce``: StableMax cross-entropy computed in float64 (paper: groks without
  regularisation);
* ``perpgrad_softmax_ce``: float32 Softmax cross-entropy with ⊥AdamW, i.e. AdamW wrapped in
  :class:`~priorlab.optim.perpgrad.PerpGrad` (paper: generalises within a few hundred epochs);
* ``softmax64_ce``: the paper's own Figure-1 baseline, Softmax cross-entropy on logits cast to
  float64 (official ``--softmax_precision 64``), kept beside the float32 one because the collapse
  the claim is about is a float32 effect.

Optimiser settings per arm follow the official Figure-1 commands (``run_main_experiments.sh``):
lr 0.01, eps 1e-25, weight decay 0, beta2 0.99, except 0.999 for StableMax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from priorlab.data.modular import modular_addition
from priorlab.diagnostics.collapse import softmax_collapse_fraction
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, Revision, RunOutput, Untested
from priorlab.models import mlp
from priorlab.nn.stablemax import log_stablemax, stablemax_cross_entropy
from priorlab.optim.perpgrad import PerpGrad
from priorlab.seed import seed_everything

ARMS = ("softmax_ce", "stablemax_ce", "perpgrad_softmax_ce", "softmax64_ce")
# (loss, beta2, perpGrad) per arm, from the official Figure-1 commands.
ARM_SETTINGS = {
    "softmax_ce": ("softmax", 0.99, False),
    "softmax64_ce": ("softmax64", 0.99, False),
    "stablemax_ce": ("stablemax", 0.999, False),
    "perpgrad_softmax_ce": ("softmax", 0.99, True),
}
LR, ADAM_EPS = 0.01, 1e-25
GROKKED = 0.9  # test accuracy that counts as "generalised" for the grok_epoch metric
# The paper runs StableMax for 80,000 epochs at p=113. Our committed p=59 runs take ~12 ms per
# epoch (1 thread, ~50 s per 4,000 epochs); p=113 measured 2.6x (StableMax) and 3.7x (softmax)
# slower side by side. The paper's budget is then ~45 CPU-minutes per StableMax run and ~1 hour
# per softmax run: with three such arms and 3 seeds about 7 CPU-hours, 3.5 hours with --jobs 2
# on this project's 2-core machines — beyond its full tier. Ours is a twentieth of it, so a
# negative StableMax result reads "inconclusive (under the paper's budget)".
STABLEMAX_BUDGET = Budget("epochs", ours=4_000, paper=80_000,
                          note="paper: p=113 for 80,000 epochs (~45 CPU-minutes per run here, ~7 "
                               "CPU-hours for the comparison); ours p=59")
PERPGRAD_BUDGET = Budget("epochs", ours=300, paper=300, note="the paper's ⊥AdamW budget (p=113); ours p=59")

CLAIM = Claim(
    seed_id=62,
    method="stablemax",
    statement=("Without weight decay, an MLP trained on modular addition with float32 Softmax "
               "cross-entropy fits the training set, runs into Softmax Collapse and stays far "
               "from generalising, while StableMax cross-entropy (still no regularisation) and "
               "perpGrad (⊥AdamW) make it generalise."),
    setting={
        "smoke": ("addition mod 23, 40% train split, MLP [200, 200] no bias, full batch, 120 "
                  "epochs per arm (perpGrad 100); checks the pipeline only."),
        "full": ("addition mod 59 (the paper uses 113; 59 is the largest modulus whose runs fit "
                 "the CPU budget), 40% of the 3,481 pairs for training (seeded split per seed), "
                 "official MLP 118-200-200-59 without biases, ReLU, float32, full-batch AdamW lr "
                 "0.01, eps 1e-25, weight decay 0, beta2 0.99 (0.999 for StableMax, as the "
                 "official command). Softmax and StableMax arms: 4,000 epochs (the paper runs "
                 "StableMax 80,000 epochs at p=113); ⊥AdamW: 300 epochs, the paper's budget. "
                 "The data order is reshuffled each epoch as in the official loop."),
    },
    metric="test_acc",
    higher_is_better=True,
    arms=ARMS,
    # The paper shows the baseline near chance (~1/p) and both methods near 100% test accuracy.
    # min_effect 0.5: the method must solve at least half of the test set more than the baseline,
    # well below the paper's ~0.95 gap (room for a shorter budget and smaller p) but far above
    # what partial memorisation effects could give; a smaller gain would not be "grokking".
    comparisons=(
        *(Comparison(method="stablemax_ce", baseline=base, kind="superiority", min_effect=0.5,
                     card="stablemax", clause="StableMax cross-entropy makes it generalise",
                     budget=STABLEMAX_BUDGET) for base in ("softmax_ce", "softmax64_ce")),
        *(Comparison(method="perpgrad_softmax_ce", baseline=base, kind="superiority",
                     min_effect=0.5, card="perpgrad", clause="perpGrad (⊥AdamW) makes it generalise",
                     budget=PERPGRAD_BUDGET) for base in ("softmax_ce", "softmax64_ce")),
    ),
    clauses=("float32 Softmax CE fits the training set, runs into Softmax Collapse and stays far "
             "from generalising", "StableMax cross-entropy makes it generalise",
             "perpGrad (⊥AdamW) makes it generalise"),
    untested=(Untested("float32 Softmax CE fits the training set, runs into Softmax Collapse and "
                       "stays far from generalising",
                       "descriptive, not a comparison: the softmax arms' train accuracy, test "
                       "accuracy and collapse_fraction are reported in the arm table and plots"),),
    tiers={
        "smoke": {"p": 23, "train_fraction": 0.4, "hidden": [200, 200], "epochs": 120,
                  "perpgrad_epochs": 100, "eval_points": 12},
        "full": {"p": 59, "train_fraction": 0.4, "hidden": [200, 200], "epochs": 4000,
                 "perpgrad_epochs": 300, "eval_points": 40},
    },
    seeds={"smoke": 2, "full": 3},
    revisions=(Revision(2, "outside review: add the paper's float64 softmax baseline beside float32, "
                           "one status per method (stablemax, perpgrad) and the paper's budgets"),),
    paper_value=("Addition mod 113, 40% train: float32 Softmax CE without weight decay reaches "
                 "100% train and stays near chance on test as Softmax Collapse sets in; StableMax "
                 "groks without regularisation (official run: 80,000 epochs); ⊥AdamW reaches "
                 "~100% test within 300 epochs (Figure 1)."),
    curves=("test_acc", "train_acc", "collapse_fraction"),
    extra_metrics=("train_acc", "collapse_fraction", "epochs", "grok_epoch", "weight_norm"),
)


def _eval_epochs(epochs: int, points: int) -> list[int]:
    """About ``points`` log-spaced epochs in [1, epochs] (early dynamics), plus every twentieth
    of the run (late grokking), always including the last."""
    marks = {round(math.exp(i * math.log(epochs) / max(points - 1, 1))) for i in range(points)}
    marks |= {max(1, round(epochs * k / 20)) for k in range(1, 21)}
    return sorted(marks)


def _collapse_fraction(loss_name: str, logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of training samples whose loss is exactly 0 in the loss's working precision."""
    if loss_name in ("softmax", "softmax64"):
        return softmax_collapse_fraction(logits.double() if loss_name == "softmax64" else logits, targets)
    logprobs = log_stablemax(logits.double(), dtype=torch.float64)
    return float((logprobs.gather(1, targets.unsqueeze(1)) == 0).double().mean())


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARM_SETTINGS:
        raise did_you_mean(arm, ARMS, "arm")
    return _run(arm, cfg, seed)


def _run(arm: str, cfg: dict, seed: int) -> RunOutput:
    loss_name, beta2, use_perpgrad = ARM_SETTINGS[arm]
    data = modular_addition(cfg["p"], cfg["train_fraction"], seed=seed)
    seed_everything(seed)
    model = mlp(2 * cfg["p"], list(cfg["hidden"]), cfg["p"], bias=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, beta2), eps=ADAM_EPS,
                                  weight_decay=0.0)
    if use_perpgrad:
        optimizer = PerpGrad(optimizer)
    loss_fn = {"stablemax": stablemax_cross_entropy, "softmax": F.cross_entropy,
               "softmax64": lambda logits, y: F.cross_entropy(logits.double(), y)}[loss_name]
    epochs = cfg["perpgrad_epochs"] if use_perpgrad else cfg["epochs"]
    eval_at = set(_eval_epochs(epochs, cfg["eval_points"]))
    order = torch.Generator().manual_seed(seed)
    x_train, y_train = data.train_inputs, data.train_targets

    curves = {name: {"x": [], "y": []} for name in CLAIM.curves}
    last: dict[str, float] = {}
    grok_epoch = float(epochs + 1)  # "not within the budget"
    for epoch in range(1, epochs + 1):
        # The official loop reshuffles the full batch every epoch (it changes float rounding).
        perm = torch.randperm(len(y_train), generator=order)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x_train[perm]), y_train[perm]).backward()
        optimizer.step()
        if epoch in eval_at:
            model.eval()
            with torch.no_grad():
                train_logits = model(x_train)
                last = {
                    "train_acc": float((train_logits.argmax(1) == y_train).float().mean()),
                    "test_acc": float((model(data.test_inputs).argmax(1) == data.test_targets)
                                      .float().mean()),
                    "collapse_fraction": _collapse_fraction(loss_name, train_logits, y_train),
                }
            for name in CLAIM.curves:
                curves[name]["x"].append(epoch)
                curves[name]["y"].append(last[name])
            if last["test_acc"] >= GROKKED and grok_epoch > epochs:
                grok_epoch = float(epoch)

    with torch.no_grad():
        weight_norm = float(torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters())))
    metrics = {**last, "epochs": float(epochs), "grok_epoch": grok_epoch, "weight_norm": weight_norm}
    info = {
        "loss": f"{loss_name} cross-entropy ({'float32' if loss_name == 'softmax' else 'float64'})",
        "optimizer": (f"{'PerpGrad(' if use_perpgrad else ''}AdamW(lr={LR}, betas=(0.9, {beta2}), "
                      f"eps={ADAM_EPS}, weight_decay=0){')' if use_perpgrad else ''}"),
        "n_train": len(y_train), "n_test": len(data.test_targets),
        "chance_acc": 1.0 / cfg["p"],
        "collapse_fraction": ("fraction of training samples whose loss is exactly 0 in the loss's "
                              "working precision (Softmax Collapse for the softmax arms)"),
        "grok_epoch": f"first evaluated epoch with test_acc >= {GROKKED}; epochs + 1 if none",
    }
    return RunOutput(metrics=metrics, curves=curves, info=info,
                     resolution={"test_acc": 1 / len(data.test_targets), "train_acc": 1 / len(y_train)})
