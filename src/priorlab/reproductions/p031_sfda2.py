"""Paper 31, SF(DA)^2: source-free adaptation beats SHOT and AaD on the target domain.

Source domain: Fashion-MNIST (3,000 training images). Target domain: the same classes rotated
by 20 degrees, contrast halved around each image's mean and Gaussian noise of std 0.1 added
(a fixed corruption; 1,600 unlabelled images to adapt on, 500 labelled ones to select a
hyperparameter on, 2,000 to test on). Per seed a source model (small CNN -> 64-d bottleneck with
BatchNorm -> weight-normalised linear classifier, SHOT's layout) is trained on the labelled
source with label smoothing 0.1; then each arm adapts a copy using only unlabelled target data
(no source data), with the official recipe shared by all arms: SGD + Nesterov momentum 0.9,
weight decay 1e-3, backbone at 0.1x the base learning rate, lr decay (1 + 10 p)^-0.75,
BatchNorm in training mode, batch 64, 15 epochs. Arms:

* ``source_only``: no adaptation;
* ``shot``: information maximisation + beta x cross-entropy on SHOT pseudo-labels refreshed every
  epoch, classifier frozen (official SHOT);
* ``aad``: neighbour attraction + linear dispersion (AaD);
* ``snc``: SF(DA)^2's spectral neighbourhood clustering alone (squared dispersion) — ablation;
* ``sfda2``: SNC + implicit feature augmentation + feature disentanglement.

Equal tuning budget: SHOT, AaD and SF(DA)^2 each tune one weight (SHOT's beta, AaD's dispersion
alpha, SF(DA)^2's FD weight alpha_2) over the same four values {0.01, 0.1, 1, 10}, selected on the
labelled target validation images; everything else keeps the official defaults. The metric is
the accuracy on the 2,000 test images (never used to adapt or select); the transductive
accuracy on the adaptation images is also recorded.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from priorlab.data.images import load_images
from priorlab.errors import did_you_mean
from priorlab.functional.source_free import (
    NeighbourhoodLoss,
    information_maximisation_loss,
    shot_pseudo_labels,
)
from priorlab.harness.claim import Budget, Claim, Comparison, RunOutput, Untested
from priorlab.seed import seed_everything
from priorlab.train import shuffled_batches

ARMS = ("source_only", "shot", "aad", "snc", "sfda2")

# arm -> the one hyperparameter it tunes (grids of equal size in the tier config)
TUNED = {"shot": "shot_cls_par", "aad": "alpha", "sfda2": "alpha_2"}

CLAUSE_SHOT = "SF(DA)^2 reaches higher target accuracy than SHOT"
CLAUSE_AAD = "SF(DA)^2 reaches higher target accuracy than AaD"
CLAUSE_REG = "the IFA and FD regularisers improve on spectral neighbourhood clustering alone"
CLAUSE_SCALE = "the gain holds on VisDA, DomainNet, Office-Home, point clouds and imbalanced data"

_COMMON = {"channels": 8, "bottleneck": 64, "batch_size": 64, "source_lr": 1e-3,
           "label_smoothing": 0.1, "lr": 0.01, "weight_decay": 1e-3, "backbone_lr_scale": 0.1,
           # official defaults (SF(DA)^2 / AaD VisDA scripts); alpha is AaD's tuned weight too
           "k": 5, "alpha": 1.0, "beta": 5.0, "alpha_1": 1e-4, "lambda_0": 5.0,
           # one weight per method, the same decade grid for each, which holds every official
           # value: SHOT's beta (shot_cls_par, official 0.3), AaD's dispersion alpha (official
           # 1), SF(DA)^2's FD weight alpha_2 (official VisDA 10, which collapsed a one-seed trial
           # here). Seed-0 pilots on 0.1-1, 0.3-3 and 0.1-10 grids picked edges (SHOT 1.0, 0.3,
           # 0.1; SF(DA)^2 0.3, 0.1), hence a fourth decade below, for every method alike.
           "grids": {"shot": [0.01, 0.1, 1.0, 10.0], "aad": [0.01, 0.1, 1.0, 10.0],
                     "sfda2": [0.01, 0.1, 1.0, 10.0]}}

CLAIM = Claim(
    seed_id=31,
    method="sfda2",
    statement=("SF(DA)^2 (spectral neighbourhood clustering with implicit feature augmentation and "
               "feature disentanglement) adapts a source model to an unlabelled target domain "
               "better than SHOT and AaD, and its regularisers add to neighbourhood clustering."),
    setting={
        "smoke": ("sklearn digits -> corrupted digits (a milder shift for 8x8 images), 300 "
                  "source and 192 target images, 20 source epochs, 3 adaptation epochs; checks "
                  "that the pipeline runs."),
        "full": ("Fashion-MNIST (3,000 source images, 5 epochs Adam) -> Fashion-MNIST rotated "
                 "20 degrees, contrast x0.5, noise std 0.1 (1,600 unlabelled images to adapt on, "
                 "500 labelled to select one weight per method on, 2,000 to test); small CNN "
                 "with a 64-d BatchNorm bottleneck and weight-normalised head; 15 adaptation "
                 "epochs of batch 64 at base lr 0.01 (official SGD recipe). The paper adapts "
                 "ImageNet-pretrained ResNets on VisDA/Office-Home/DomainNet."),
    },
    metric="test_acc",
    higher_is_better=True,
    arms=ARMS,
    # min_effect 0.005 (10 of 2,000 test images): the paper's margins over AaD are below a point
    # on VisDA, so a bar above half a point would ask more than the paper shows. The snc arm is
    # SF(DA)^2 with alpha_1 = alpha_2 = 0 (nothing left to tune), the paper's ablation.
    comparisons=(
        Comparison(method="sfda2", baseline="shot", min_effect=0.005, clause=CLAUSE_SHOT),
        Comparison(method="sfda2", baseline="aad", min_effect=0.005, clause=CLAUSE_AAD),
        Comparison(method="sfda2", baseline="snc", min_effect=0.005, clause=CLAUSE_REG),
    ),
    clauses=(CLAUSE_SHOT, CLAUSE_AAD, CLAUSE_REG, CLAUSE_SCALE),
    untested=(Untested(CLAUSE_SCALE, "CPU budget and offline data: Fashion-MNIST -> corrupted "
                                     "Fashion-MNIST with a small CNN stands in for the paper's "
                                     "benchmarks"),),
    budget=Budget("adaptation epochs", ours=15, paper=15,
                  note="the official VisDA script runs 15 epochs over the target set (max_epoch=15)"),
    tiers={
        "smoke": {**_COMMON, "dataset": "digits", "n_source": 300, "n_target": 192, "n_val": 60,
                  "n_test": 150, "rotation": 10.0, "contrast": 0.7, "noise": 0.05,
                  "source_lr": 1e-2, "source_epochs": 20, "epochs": 3},
        "full": {**_COMMON, "dataset": "fashion-mnist", "n_source": 3000, "n_target": 1600,
                 "n_val": 500, "n_test": 2000, "rotation": 20.0, "contrast": 0.5, "noise": 0.1,
                 "source_epochs": 5, "epochs": 15},
    },
    seeds={"smoke": 1, "full": 5},
    paper_value=("VisDA-2017 per-class accuracy (ResNet-101): SF(DA)^2 88.1 vs AaD 88.0 and SHOT "
                 "82.9 (as we recall the paper's Table; not re-checked from here)."),
    curves=("test_acc",),
    extra_metrics=("adapt_acc", "source_acc_target", "test_nll"),
)


class SourceModel(nn.Module):
    """Small CNN backbone, BatchNorm bottleneck and weight-normalised classifier (SHOT's split)."""

    def __init__(self, num_classes: int, channels: int, bottleneck: int, image_size: int):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten())
        self.bottleneck = nn.Sequential(nn.Linear(2 * channels * (image_size // 4) ** 2, bottleneck),
                                        nn.BatchNorm1d(bottleneck))
        self.classifier = weight_norm(nn.Linear(bottleneck, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def corrupt(x: torch.Tensor, *, rotation: float, contrast: float, noise: float,
            seed: int = 0) -> torch.Tensor:
    """The target domain: images rotated by ``rotation`` degrees, their contrast around each
    image's mean scaled by ``contrast``, then Gaussian noise of std ``noise``, clipped to [0, 1]
    (fixed noise seed: the target set is the same for every arm and seed)."""
    angle = torch.tensor(rotation * torch.pi / 180)
    rotate = torch.stack([torch.stack([angle.cos(), -angle.sin(), torch.tensor(0.0)]),
                          torch.stack([angle.sin(), angle.cos(), torch.tensor(0.0)])])
    grid = F.affine_grid(rotate.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + contrast * (x - mean)
    x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x.clamp(0, 1)


@lru_cache(maxsize=2)
def _data(dataset: str, n_source: int, n_target: int, n_val: int, n_test: int,
          rotation: float, contrast: float, noise: float):
    """Source train images; target images (corrupted) to adapt on, to select on, to test on."""
    data = load_images(dataset, n_train=n_source, n_val=n_target, n_test=n_val + n_test,
                       split_seed=0)
    shift = {"rotation": rotation, "contrast": contrast, "noise": noise}
    held_out = corrupt(data.x_test, **shift, seed=2)
    return (data.x_train, data.y_train, corrupt(data.x_val, **shift, seed=1), data.y_val,
            held_out[:n_val], data.y_test[:n_val], held_out[n_val:], data.y_test[n_val:])


def _data_of(cfg: dict):
    return _data(cfg["dataset"], cfg["n_source"], cfg["n_target"], cfg["n_val"], cfg["n_test"],
                 cfg["rotation"], cfg["contrast"], cfg["noise"])


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


SOURCE_KEYS = ("dataset", "n_source", "n_target", "n_val", "n_test", "rotation", "contrast", "noise",
               "channels", "bottleneck", "batch_size", "source_lr", "label_smoothing",
               "source_epochs")


def _source_model(seed: int, cfg: dict) -> SourceModel:
    """The seed's source model, trained once per process (every arm of a seed starts from it)."""
    return _trained_source(seed, tuple((k, cfg[k]) for k in SOURCE_KEYS))


@lru_cache(maxsize=2)
def _trained_source(seed: int, key: tuple) -> SourceModel:
    cfg = dict(key)
    xs, ys, *_ = _data_of(cfg)
    generator = seed_everything(seed)
    model = SourceModel(10, cfg["channels"], cfg["bottleneck"], xs.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["source_lr"])
    model.train()
    for _ in range(cfg["source_epochs"]):
        for idx in shuffled_batches(len(ys), cfg["batch_size"], generator, drop_last=True):
            loss = F.cross_entropy(model(xs[idx]), ys[idx], label_smoothing=cfg["label_smoothing"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def _optimizer(model: SourceModel, cfg: dict, train_classifier: bool) -> torch.optim.SGD:
    groups = [{"params": model.backbone.parameters(), "lr": cfg["lr"] * cfg["backbone_lr_scale"]},
              {"params": model.bottleneck.parameters(), "lr": cfg["lr"]}]
    if train_classifier:
        groups.append({"params": model.classifier.parameters(), "lr": cfg["lr"]})
    else:
        model.classifier.requires_grad_(False)
    optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=cfg["weight_decay"])
    for group in optimizer.param_groups:
        group["lr0"] = group["lr"]
    return optimizer


@torch.no_grad()
def _outputs(model: SourceModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    features = model.features(x)
    return features, model.classifier(features).softmax(1)


def _adapt(arm: str, model: SourceModel, cfg: dict, xt: torch.Tensor, seed: int,
           evaluate) -> list[float]:
    """Adapt ``model`` in place on the unlabelled target ``xt``; returns evaluate() per epoch."""
    generator = seed_everything(seed)
    optimizer = _optimizer(model, cfg, train_classifier=arm != "shot")
    total = cfg["epochs"] * (len(xt) // cfg["batch_size"])
    objective = None
    if arm != "shot":
        objective = NeighbourhoodLoss(
            len(xt), model.classifier.out_features, cfg["bottleneck"],
            variant="aad" if arm == "aad" else "sfda2", k=cfg["k"], alpha=cfg["alpha"],
            beta=cfg["beta"], lambda_0=cfg["lambda_0"],
            alpha_1=cfg["alpha_1"] if arm == "sfda2" else 0.0,
            alpha_2=cfg["alpha_2"] if arm == "sfda2" else 0.0)
        objective.fill_banks(*_outputs(model, xt))
    scores, step = [], 0
    for _ in range(cfg["epochs"]):
        if arm == "shot":  # SHOT refreshes its pseudo-labels once per epoch (official interval)
            pseudo = shot_pseudo_labels(*_outputs(model, xt))
        model.train()
        for idx in shuffled_batches(len(xt), cfg["batch_size"], generator, drop_last=True):
            step += 1
            progress = step / total
            for group in optimizer.param_groups:
                group["lr"] = group["lr0"] * (1 + 10 * progress) ** -0.75
            features = model.features(xt[idx])
            logits = model.classifier(features)
            if arm == "shot":
                loss = (information_maximisation_loss(logits.softmax(1))
                        + cfg["shot_cls_par"] * F.cross_entropy(logits, pseudo[idx]))
            else:
                loss, _ = objective(idx, features, logits, model.classifier.weight, progress)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scores.append(evaluate(model))
    return scores


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    xs, ys, xt, yt, x_val, y_val, x_test, y_test = _data_of(cfg)
    source = _source_model(seed, cfg)
    source_acc = _accuracy(source, x_test, y_test)
    model, curve, tuning = source, [], {}
    if arm != "source_only":
        param = TUNED.get(arm)
        grid = cfg["grids"][arm] if param else [None]
        best = None
        for value in grid:
            candidate = copy.deepcopy(source)
            trial_cfg = {**cfg, param: value} if param else cfg
            trial_curve = _adapt(arm, candidate, trial_cfg, xt, seed + 1,
                                 lambda m: _accuracy(m, x_test, y_test))
            val_acc = _accuracy(candidate, x_val, y_val)  # selection: labelled target val only
            if best is None or val_acc > best[0]:
                best = (val_acc, value, candidate, trial_curve)
        _, selected, model, curve = best
        if param:
            tuning = {param: {"grid": list(grid), "selected": selected}}
    model.eval()
    with torch.no_grad():
        test_nll = float(F.cross_entropy(model(x_test), y_test))
    metrics = {"test_acc": _accuracy(model, x_test, y_test),
               "test_nll": test_nll,
               "adapt_acc": _accuracy(model, xt, yt),
               "source_acc_target": source_acc}
    epochs = [float(e) for e in range(len(curve) + 1)]
    return RunOutput(metrics=metrics, curves={"test_acc": {"x": epochs, "y": [source_acc, *curve]}},
                     info={"source_train_acc": _accuracy(source, xs, ys)},
                     resolution={"test_acc": 1 / len(y_test), "adapt_acc": 1 / len(yt),
                                 "source_acc_target": 1 / len(y_test)},
                     tuning=tuning)
