"""Paper 17, HyperZ·Z·W / Terminator: a residual-free slow-fast network classifies as well as a
ResNet of the same size, and reaches a target accuracy in fewer steps.

Fashion-MNIST (28x28), a random training subset, a 1,000-image validation split and 5,000 test
images of the official test set. Two arms with the same number of parameters (the closest
ResNet width, within ~7%; both counts go into ``info``), the same optimiser (AdamW, cosine
decay to 0), the same batches and the same number of steps:

* ``terminator``: :class:`priorlab.nn.hyperzzw.Terminator`, SFNE blocks at full resolution (global,
  local and elementwise HyperZ·Z·W branches, hyper-kernels from MAGNet slow nets), no residuals;
* ``resnet``: a pre-2016-style ResNet (conv-BN-ReLU stem, one residual block per stage, stride-2
  stages, BatchNorm), its width chosen so its parameter count is closest to the Terminator's.

Each arm trains once per learning rate of its own 3-point grid (same size and spacing); the lr
with the best final validation accuracy is kept (ties: smaller lr) and its test accuracy is the
metric. The speed metric is ``steps_to_target``: the first evaluation step (every
``eval_every`` steps) at which the validation accuracy reaches ``target_acc`` (``steps +
eval_every`` if never), for the selected lr.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.data.images import load_images
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested
from priorlab.nn.hyperzzw import Terminator
from priorlab.seed import seed_everything
from priorlab.train import shuffled_batches

ARMS = ("terminator", "resnet")
CLAUSE_ACC = "the Terminator is competitive with or better than a residual CNN of equal size"
CLAUSE_FAST = "the Terminator trains faster (fewer steps to a target accuracy)"
CLAUSE_SCALE = "state-of-the-art accuracy on CIFAR/ImageNet-scale and 1-D pixel-level benchmarks"
CLAUSE_FEWER = "the Terminator needs fewer parameters than residual baselines for the same accuracy"

# one 3-point grid per arm (same size, same ~x3 spacing), centred where seed-0 pilots found each
# arm's best validation lr (Terminator: 1e-3 .51, 3e-3 .62, 1e-2 .73, 3e-2 .79, 1e-1 .79;
# ResNet: 1e-3 .70, 3e-3 .76, 1e-2 .76)
_COMMON = {"batch_size": 64, "weight_decay": 5e-5,
           "lr_grid": {"terminator": (1e-2, 3e-2, 1e-1), "resnet": (1e-3, 3e-3, 1e-2)},
           "local_sizes": (3, 5), "eval_batch": 500}

CLAIM = Claim(
    seed_id=17,
    method="hyperzzw-terminator",
    statement=("A residual-free Terminator (slow nets emitting hyper-kernels, global/local/"
               "elementwise HyperZ·Z·W branches) classifies images as well as or better than a "
               "residual network, with faster training convergence and fewer parameters."),
    setting={
        "smoke": "sklearn digits (8x8), 300 training images, tiny widths, 12 steps; checks the pipeline.",
        "full": ("Fashion-MNIST 28x28: 12,800 training images, 1,000 validation, 5,000 test. "
                 "Terminator with two SFNE blocks (widths 8, 16; local kernels 3 and 5; MAGNet "
                 "slow nets with 32/16 hidden units) vs a two-stage ResNet of equal parameter "
                 "count (~18.5k vs ~17.4k). AdamW, batch 64, 240 steps (1.2 passes), cosine "
                 "decay, weight decay 5e-5; lr selected on validation from a 3-point grid per "
                 "arm (Terminator {1e-2, 3e-2, 1e-1}, ResNet {1e-3, 3e-3, 1e-2}). Validation "
                 "accuracy every 20 steps gives steps to 70%. The official config trains 100 "
                 "epochs on CIFAR-10 with the Kar3 optimiser."),
    },
    metric="test_acc",
    higher_is_better=True,
    arms=ARMS,
    # margin 0.01: "competitive" read as at most one point below the ResNet on 5,000 test images
    comparisons=(Comparison(method="terminator", baseline="resnet", kind="non-inferiority",
                            margin=0.01, clause=CLAUSE_ACC),),
    # min_effect 20: one evaluation interval, the resolution of steps_to_target
    guards=(Guard(metric="steps_to_target", higher_is_better=False, kind="superiority",
                  min_effect=20, clause=CLAUSE_FAST),),
    clauses=(CLAUSE_ACC, CLAUSE_FAST, CLAUSE_FEWER, CLAUSE_SCALE),
    untested=(
        Untested(CLAUSE_FEWER, "both arms are held to the same parameter count by design (the "
                               "issue asks for equal parameters), so parameter efficiency is not "
                               "a separate test here"),
        Untested(CLAUSE_SCALE, "CPU budget: no CIFAR/ImageNet offline; Fashion-MNIST, two "
                               "blocks and one pass stand in for the paper's benchmarks"),
    ),
    budget=Budget("steps", ours=240, paper=None,
                  note=("the official config trains 100 epochs at batch 64 on CIFAR-10 (~78k "
                        "steps); the paper's Fashion-MNIST-like budget is not stated; both arms "
                        "get the same 240 steps per grid point")),
    tiers={
        "smoke": {**_COMMON, "dataset": "digits", "n_train": 300, "n_val": 100, "n_test": 200,
                  "widths": (4,), "steps": 12, "eval_every": 4, "target_acc": 0.3,
                  "slow_hidden": 8, "local_hidden": 4},
        "full": {**_COMMON, "dataset": "fashion-mnist", "n_train": 12_800, "n_val": 1_000,
                 "n_test": 5_000, "widths": (8, 16), "steps": 240, "eval_every": 20,
                 "target_acc": 0.70, "slow_hidden": 32, "local_hidden": 16},
    },
    seeds={"smoke": 2, "full": 3},
    paper_value=("not retrieved here (paper tables unavailable offline): the paper reports CIFAR-10/"
                 "100, STL-10 and LRA accuracy above residual baselines; its README says the "
                 "Terminator fits CIFAR-10 in ~20 epochs; no Fashion-MNIST number"),
    curves=("val_acc",),
    extra_metrics=("steps_to_target", "val_acc", "train_loss", "n_params"),
)


class ResNet(nn.Module):
    """Small ResNet: stem conv, then one basic residual block per stage (stage i at width 2^i w)."""

    def __init__(self, num_classes: int, width: int, stages: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        blocks, channels = [], width
        for stage in range(stages):
            out = width * 2 ** stage
            blocks.append(_BasicBlock(channels, out, stride=1 if stage == 0 else 2))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _terminator(cfg: dict, num_classes: int, size: int) -> Terminator:
    return Terminator(num_classes, 1, size, widths=tuple(cfg["widths"]),
                      local_sizes=tuple(cfg["local_sizes"]), slow_hidden=cfg["slow_hidden"],
                      local_hidden=cfg["local_hidden"])


def matched_resnet_width(target: int, num_classes: int, stages: int) -> int:
    """The ResNet width whose parameter count is closest to ``target`` (counts grow with width)."""
    width, below = 1, n_params(ResNet(num_classes, 1, stages))
    while below < target:
        above = n_params(ResNet(num_classes, width + 1, stages))
        if above >= target:
            return width + 1 if above - target < target - below else width
        width, below = width + 1, above
    return width


@lru_cache(maxsize=2)
def _data(dataset: str, n_train: int, n_val: int, n_test: int):
    data = load_images(dataset, n_train=n_train, n_val=n_val, n_test=n_test, split_seed=0)
    mean, std = data.x_train.mean(), data.x_train.std()
    norm = lambda x: (x - mean) / std  # noqa: E731
    return (norm(data.x_train), data.y_train, norm(data.x_val), data.y_val,
            norm(data.x_test), data.y_test, data.num_classes)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum())
                      for i in range(0, len(y), chunk))
    model.train()
    return correct / len(y)


def _train(arm: str, cfg: dict, seed: int, lr: float, data) -> dict:
    x_tr, y_tr, x_val, y_val, _, _, num_classes = data
    size = x_tr.shape[-1]
    seed_everything(seed)
    terminator = _terminator(cfg, num_classes, size)
    if arm == "terminator":
        model = terminator
    else:
        width = matched_resnet_width(n_params(terminator), num_classes, len(cfg["widths"]))
        seed_everything(seed)
        model = ResNet(num_classes, width, len(cfg["widths"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg["weight_decay"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg["steps"])
    order = torch.Generator().manual_seed(seed)  # same batches for both arms and every lr
    batches, losses, curve = [], [], {"x": [], "y": []}
    reached = cfg["steps"] + cfg["eval_every"]
    for step in range(1, cfg["steps"] + 1):
        if not batches:
            batches = shuffled_batches(len(y_tr), cfg["batch_size"], order, drop_last=True)
        idx = batches.pop(0)
        loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            acc = _accuracy(model, x_val, y_val, cfg["eval_batch"])
            curve["x"].append(float(step))
            curve["y"].append(acc)
            if acc >= cfg["target_acc"] and reached > cfg["steps"]:
                reached = step
    return {"model": model, "val_acc": curve["y"][-1], "curve": curve, "steps_to_target": reached,
            "train_loss": sum(losses[-cfg["eval_every"]:]) / min(len(losses), cfg["eval_every"]),
            "n_params": n_params(model), "terminator_params": n_params(terminator)}


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    data = _data(cfg["dataset"], cfg["n_train"], cfg["n_val"], cfg["n_test"])
    grid = [float(lr) for lr in cfg["lr_grid"][arm]]
    trials = {lr: _train(arm, cfg, seed, lr, data) for lr in grid}
    best_lr = max(grid, key=lambda lr: (trials[lr]["val_acc"], -lr))
    best = trials[best_lr]
    x_test, y_test = data[4], data[5]
    metrics = {"test_acc": _accuracy(best["model"], x_test, y_test, cfg["eval_batch"]),
               "val_acc": best["val_acc"], "steps_to_target": float(best["steps_to_target"]),
               "train_loss": best["train_loss"], "n_params": float(best["n_params"])}
    info = {"lr": best_lr, "n_params": best["n_params"],
            "terminator_params": best["terminator_params"],
            "val_acc_per_lr": {str(lr): trials[lr]["val_acc"] for lr in grid},
            "steps_to_target_per_lr": {str(lr): trials[lr]["steps_to_target"] for lr in grid}}
    if arm == "resnet":
        info["resnet_width"] = matched_resnet_width(best["terminator_params"], data[6],
                                                    len(cfg["widths"]))
    return RunOutput(metrics=metrics, curves={"val_acc": best["curve"]}, info=info,
                     resolution={"test_acc": 1 / len(y_test), "val_acc": 1 / len(data[3]),
                                 "steps_to_target": float(cfg["eval_every"])},
                     tuning={"lr": {"grid": grid, "selected": best_lr}})
