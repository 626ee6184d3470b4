"""Paper 3, ELR: early-learning regularisation keeps clean accuracy where cross-entropy memorises.

Symmetric noise on the training labels only (validation and test stay clean); an MLP trained
with cross-entropy (CE) or cross-entropy + ELR under the official optimiser (SGD, lr 0.02,
momentum 0.9, weight decay 1e-3, cosine warm restarts T_0=10, eta_min 1e-3, batch 128) and the
official ELR defaults (lam 3, beta 0.7). The metric is the clean test accuracy after the last
epoch (the official code reports the last epoch's test accuracy too). Also recorded, per
evaluation: ``noisy_fit`` (training accuracy against the noisy labels), ``memorised_fraction``
(share of the corrupted training samples predicted as their wrong label) and
``corrected_fraction`` (share of them predicted as their true label), as in the paper's Fig. 1.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.data.images import ImageData, load_images
from priorlab.data.noise import symmetric_noise
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, RunOutput, Untested
from priorlab.hooks import Adapter
from priorlab.methods.elr import ELR
from priorlab.models import mlp
from priorlab.seed import seed_everything
from priorlab.train import SchedulerStep, accuracy, fit

ARMS = {"ce_sym40": ("ce", 0.4), "elr_sym40": ("elr", 0.4),
        "ce_sym80": ("ce", 0.8), "elr_sym80": ("elr", 0.8)}

CLAUSES = ("under symmetric label noise, cross-entropy first fits the clean labels and then "
           "memorises the wrong ones, losing test accuracy",
           "ELR prevents the memorisation",
           "ELR ends with higher clean test accuracy than cross-entropy",
           "the CIFAR-10 numbers (80% noise: 73.9% vs 53.8%)")

_OPTIM = dict(lr=0.02, momentum=0.9, weight_decay=1e-3, batch_size=128, T_0=10, eta_min=1e-3,
              lam=3.0, beta=0.7)

CLAIM = Claim(
    seed_id=3,
    method="elr",
    statement=("Under symmetric label noise, cross-entropy first fits the clean labels and then "
               "memorises the wrong ones, losing test accuracy; ELR prevents the memorisation and "
               "ends with higher clean test accuracy (CIFAR-10, 80% noise: 73.9% vs 53.8%)."),
    setting={
        "smoke": ("scikit-learn digits (1,078 train, 360 test), MLP 64-128-10, 10 epochs; checks "
                  "the plumbing only."),
        "full": ("Fashion-MNIST, 2,000 training images with 40% / 80% symmetric noise (that share "
                 "of labels resampled uniformly over all 10 classes, as in the official code, so "
                 "~36% / ~72% are wrong), 5,000 clean test images; MLP 784-256-10, no "
                 "augmentation, 100 epochs of 16 steps, test accuracy every 4 epochs. Official "
                 "optimiser and schedule (SGD lr 0.02, momentum 0.9, weight decay 1e-3, batch "
                 "128, cosine warm restarts T_0=10, eta_min 1e-3) and ELR defaults (lam 3, beta "
                 "0.7). Changed from the official CIFAR-10 run (ResNet-34, 45k images, crop/flip "
                 "augmentation, 150 epochs): a small training set and many epochs so that CE "
                 "reaches the memorisation phase on CPU."),
    },
    metric="test_acc",
    higher_is_better=True,
    arms=tuple(ARMS),
    # The paper's gaps on CIFAR-10 are 7 (40%) and 20 (80%) points; 2 points is a clear,
    # conservative bar for a small MLP on an easier dataset.
    comparisons=(Comparison("elr_sym40", "ce_sym40", "superiority", min_effect=0.02,
                            clause=CLAUSES[2]),
                 Comparison("elr_sym80", "ce_sym80", "superiority", min_effect=0.02,
                            clause=CLAUSES[2])),
    clauses=CLAUSES,
    untested=(
        Untested(CLAUSES[0], "a statement about one arm's trajectory (best vs last accuracy, "
                             "memorised_fraction over epochs): recorded and plotted for every run, "
                             "but the verdict compares arms, not two points of one curve"),
        Untested(CLAUSES[1], "memorised_fraction is reported per arm beside the verdict; it was not "
                             "declared as a guard before the first full-tier run, and adding one "
                             "is a claim revision"),
        Untested(CLAUSES[3], "needs CIFAR-10 and a ResNet-34 for 150 epochs; a small MLP on "
                             "Fashion-MNIST tests the direction, not the numbers"),
    ),
    budget=Budget(unit="epochs", ours=100, paper=150,
                  note="epochs over our 2,000 images; the official CIFAR-10 config runs 150 over 45k"),
    tiers={
        "smoke": dict(dataset="digits", n_train=None, n_test=None, hidden=[128], epochs=10,
                      eval_every=1, **_OPTIM),
        "full": dict(dataset="fashion-mnist", n_train=2000, n_test=5000, hidden=[256],
                     epochs=100, eval_every=4, **_OPTIM),
    },
    seeds={"smoke": 2, "full": 5},
    paper_value=("CIFAR-10 test accuracy, ELR vs CE: 40% sym. 89.15 vs 81.88; "
                 "80% sym. 73.86 vs 53.82"),
    curves=("test_acc", "memorised_fraction", "noisy_fit"),
    extra_metrics=("best_test_acc", "memorised_fraction"),
)


@lru_cache(maxsize=4)
def _data(name: str, n_train: int | None, n_test: int | None) -> ImageData:
    return load_images(name, n_train=n_train, n_test=n_test, split_seed=0)


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm of paper 3 (ELR)")
    method, rate = ARMS[arm]
    data = _data(cfg["dataset"], cfg["n_train"], cfg["n_test"])
    clean = data.y_train
    noisy, corrupted = symmetric_noise(clean, rate, data.num_classes, seed=seed)
    gen = seed_everything(seed)
    x_train = data.x_train
    model = mlp(x_train[0].numel(), cfg["hidden"], data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=cfg["T_0"], eta_min=cfg["eta_min"])
    adapters: list[Adapter] = [SchedulerStep(scheduler, every="epoch")]
    if method == "elr":
        adapters.append(ELR(len(noisy), data.num_classes, lam=cfg["lam"], beta=cfg["beta"]))

    def batches():
        # what a DataLoader over IndexedDataset(x, noisy) yields, without per-item overhead
        order = torch.randperm(len(noisy), generator=gen)
        for start in range(0, len(order), cfg["batch_size"]):
            idx = order[start:start + cfg["batch_size"]]
            yield x_train[idx], noisy[idx], idx

    def evaluate(model):
        pred = model(x_train).argmax(dim=1)
        return {"test_acc": accuracy(model, data.x_test, data.y_test),
                # fit to the labels trained on, and share of wrong labels reproduced / corrected
                "noisy_fit": float((pred == noisy).float().mean()),
                "memorised_fraction": float((pred[corrupted] == noisy[corrupted]).float().mean()),
                "corrected_fraction": float((pred[corrupted] == clean[corrupted]).float().mean())}

    history = fit(model, batches, optimizer, F.cross_entropy, epochs=cfg["epochs"],
                  adapters=adapters, evaluate=evaluate, eval_every=cfg["eval_every"])
    epochs = [float(e) for e in history["epoch"]]
    names = ("test_acc", "noisy_fit", "memorised_fraction", "corrected_fraction")
    metrics = {name: history[name][-1] for name in names}
    metrics["best_test_acc"] = max(history["test_acc"])
    curves = {name: {"x": epochs, "y": history[name]} for name in names}
    info = {"actual_noise_rate": float(corrupted.float().mean()), "n_train": len(noisy),
            "best_epoch": int(epochs[history["test_acc"].index(metrics["best_test_acc"])])}
    # one test image moves an accuracy on n images by 1/n
    resolution = {name: 1 / len(data.y_test) for name in ("test_acc", "best_test_acc")}
    return RunOutput(metrics=metrics, curves=curves, info=info, resolution=resolution)
