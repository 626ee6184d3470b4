"""Paper 42: a latent-quantised variational purifier restores accuracy under l_inf attacks.

One MLP classifier per seed, trained on clean 8x8 digits; the defences (none, a plain
autoencoder, the quantised variational purifier) are trained on the clean training images
without labels and put in front of the unchanged classifier. Attacks (eps 0.1 in [0, 1] pixels):

- grey-box, as in the paper: FGSM and PGD computed on the classifier alone, then fed through
  the defence (``fgsm_greybox_acc``, ``pgd_greybox_acc``, the claim's metric);
- adaptive, white-box: PGD through the defence with BPDA (identity backward through the
  purifier, since rounding has zero gradient) and EOT over the latent sampling noise
  (``pgd_adaptive_acc``, a guard: the abstract claims resilience to white-box attacks too).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.data.images import ImageData, load_images
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Claim, Comparison, Guard, RunOutput
from priorlab.models import mlp
from priorlab.nn.purifier import PurifiedClassifier, QuantisedVAEPurifier, purifier_loss
from priorlab.robust.attacks import fgsm, pgd
from priorlab.seed import seed_everything
from priorlab.train import accuracy, shuffled_batches

ARMS = ("none", "autoencoder", "quantised")

_COMMON = {"dataset": "digits", "classifier_hidden": [128], "classifier_epochs": 40,
               "purifier_hidden": 256, "latent": 16, "quant_step": 0.5, "kl_weight": 0.1, "lr": 1e-3,
               "batch_size": 64, "eps": 0.1, "pgd_alpha": 0.0125, "eot": 8}

CLAIM = Claim(
    seed_id=42,
    method="quantised-purifier",
    statement=("Purifying inputs through a Lipschitz encoder, a quantised variational latent and "
               "a decoder, trained on clean data only, restores much of a classifier's accuracy "
               "under FGSM/PGD attacks (black- and white-box) where the undefended classifier "
               "collapses."),
    setting={
        "smoke": ("8x8 digits, tiny budgets (purifier 5 epochs, PGD 3 steps, EOT 2); checks the "
                  "plumbing only."),
        "full": ("scikit-learn 8x8 digits (1,078 train / 360 test), classifier MLP 64-128-10 "
                 "(Adam 1e-3, 40 epochs); purifiers MLP 64-256-256-16 (+ mirror decoder), 60 "
                 "epochs of Adam 1e-3 on clean images with BCE + 0.1 KL; quantisation step 0.5 "
                 "(KL weight and step chosen on the validation set's clean purified accuracy, "
                 "before any attack was run: with KL weight 1 the Lipschitz-1 encoder gives only "
                 "~45% clean accuracy). "
                 "l_inf eps 0.1; PGD 20 steps of 0.0125 with random start; adaptive PGD = "
                 "BPDA + EOT over 8 latent samples per step."),
    },
    metric="pgd_greybox_acc",
    higher_is_better=True,
    arms=ARMS,
    # The paper's gains under grey-box PGD are tens of points (MNIST: near 0 -> ~90%); 10 points
    # is a clear, conservative bar. The guard asks for a real (5-point) gain under the adaptive
    # white-box attack as well, because the abstract claims white-box resilience.
    comparisons=(Comparison("quantised", "none", "superiority", min_effect=0.10),),
    guards=(Guard("pgd_adaptive_acc", higher_is_better=True, kind="superiority",
                  min_effect=0.05),),
    tiers={
        "smoke": dict(_COMMON, classifier_epochs=5, purifier_epochs=5, n_test=60, pgd_steps=3,
                      eot=2),
        "full": dict(_COMMON, purifier_epochs=60, n_test=None, pgd_steps=20),
    },
    seeds={"smoke": 2, "full": 5},
    paper_value="MNIST, grey-box PGD: undefended near 0%, purified ~90% (paper's tables)",
    curves=("purifier_loss",),
    extra_metrics=("clean_acc", "fgsm_greybox_acc", "pgd_adaptive_acc", "fgsm_adaptive_acc"),
)


@lru_cache(maxsize=2)
def _data(name: str) -> ImageData:
    return load_images(name, split_seed=0)


def _train_classifier(data: ImageData, cfg: dict, gen: torch.Generator):
    model = mlp(data.x_train[0].numel(), cfg["classifier_hidden"], data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    for _ in range(cfg["classifier_epochs"]):
        for idx in shuffled_batches(len(data.y_train), cfg["batch_size"], gen):
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _train_purifier(arm: str, data: ImageData, cfg: dict, gen: torch.Generator):
    quantised = arm == "quantised"
    purifier = QuantisedVAEPurifier(
        data.x_train[0].numel(), cfg["purifier_hidden"], cfg["latent"],
        quant_step=cfg["quant_step"] if quantised else None, lipschitz=quantised,
        variational=quantised)
    opt = torch.optim.Adam(purifier.parameters(), lr=cfg["lr"])
    losses = []
    for _ in range(cfg["purifier_epochs"]):
        total = 0.0
        for idx in shuffled_batches(len(data.y_train), cfg["batch_size"], gen):
            x = data.x_train[idx]
            loss = purifier_loss(x, *purifier(x), kl_weight=cfg["kl_weight"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(data.y_train))
    return purifier.eval(), losses


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm of paper 42 (quantised purifier)")
    data = _data(cfg["dataset"])
    x, y = data.x_test, data.y_test
    if cfg["n_test"] is not None:
        x, y = x[:cfg["n_test"]], y[:cfg["n_test"]]
    gen = seed_everything(seed)
    classifier = _train_classifier(data, cfg, gen)
    for p in classifier.parameters():
        p.requires_grad_(False)
    eps, alpha, steps = cfg["eps"], cfg["pgd_alpha"], cfg["pgd_steps"]
    # grey-box attacks see the classifier only, so they are the same for every arm
    x_fgsm = fgsm(classifier, x, y, eps)
    x_pgd = pgd(classifier, x, y, eps, alpha, steps, random_start=True, generator=gen)
    curves, info = {}, {}
    if arm == "none":
        defended = adaptive_model = classifier
        eot = 1
    else:
        purifier, losses = _train_purifier(arm, data, cfg, gen)
        for p in purifier.parameters():
            p.requires_grad_(False)
        defended = PurifiedClassifier(purifier, classifier)
        adaptive_model = PurifiedClassifier(purifier, classifier, bpda=True)
        # only the variational purifier is random; EOT over a deterministic one is wasted work
        eot = cfg["eot"] if purifier.variational else 1
        curves["purifier_loss"] = {"x": list(range(1, len(losses) + 1)), "y": losses}
        info["encoder_lipschitz_bound"] = purifier.encoder_lipschitz_bound()
    x_fgsm_adaptive = fgsm(adaptive_model, x, y, eps, eot=eot)
    x_pgd_adaptive = pgd(adaptive_model, x, y, eps, alpha, steps, random_start=True,
                         generator=gen, eot=eot)
    metrics = {"clean_acc": accuracy(defended, x, y),
               "fgsm_greybox_acc": accuracy(defended, x_fgsm, y),
               "pgd_greybox_acc": accuracy(defended, x_pgd, y),
               "fgsm_adaptive_acc": accuracy(defended, x_fgsm_adaptive, y),
               "pgd_adaptive_acc": accuracy(defended, x_pgd_adaptive, y)}
    info["undefended_clean_acc"] = accuracy(classifier, x, y)
    return RunOutput(metrics=metrics, curves=curves, info=info)
