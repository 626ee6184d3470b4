"""Paper 42: a latent-quantised variational purifier restores accuracy under l_inf attacks.

One MLP classifier per seed, trained on clean 8x8 digits; the defences (none, a plain
autoencoder, the quantised variational purifier) are trained on the clean training images
without labels and put in front of the unchanged classifier. Attacks at the paper's MNIST size
(eps 0.3 in [0, 1] pixels; PGD 40 steps of 0.01 from a random start):

- grey-box, as in the paper: FGSM and PGD computed on the classifier alone, then fed through
  the defence (``fgsm_greybox_acc``, ``pgd_greybox_acc``, the claim's metric);
- adaptive, white-box, with EOT over the latent sampling: PGD whose gradient runs through the
  whole purifier (encoder, reparametrised sample, straight-through quantiser, decoder:
  ``pgd_fullgrad_acc``) and PGD that treats the purifier as the identity in the backward pass
  (``pgd_bpda_identity_acc``); ``pgd_adaptive_acc`` keeps, per example, whichever of the two
  inputs has the higher expected loss (a guard: the abstract claims white-box resilience).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.data.images import ImageData, load_images
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, Revision, RunOutput, Untested
from priorlab.models import mlp
from priorlab.nn.purifier import PurifiedClassifier, QuantisedVAEPurifier, purifier_loss
from priorlab.robust.attacks import fgsm, pgd, strongest_per_example
from priorlab.seed import seed_everything
from priorlab.train import accuracy, shuffled_batches

ARMS = ("none", "autoencoder", "quantised")

# eps 0.3 with PGD 40 x 0.01 and a random start is the MNIST protocol of Madry et al.
# (arXiv:1706.06083) and cleverhans' MadryEtAl defaults, the l_inf size MNIST defences of the
# paper's time (Defense-GAN, MagNet) are evaluated at.
_COMMON = {"dataset": "digits", "classifier_hidden": [128], "classifier_epochs": 40,
           "purifier_hidden": 256, "latent": 16, "quant_step": 0.5, "kl_weight": 0.1, "lr": 1e-3,
           "batch_size": 64, "eps": 0.3, "pgd_alpha": 0.01, "eot": 8}

PGD_CLAUSE = "restores much of a classifier's accuracy under (grey-box) PGD attacks"
FGSM_CLAUSE = "restores much of a classifier's accuracy under (grey-box) FGSM attacks"
WHITE_BOX_CLAUSE = "the resilience holds against white-box (adaptive) attacks"
BLACK_BOX_CLAUSE = "the resilience holds against black-box (transfer) attacks"
COLLAPSE_CLAUSE = "the undefended classifier collapses under these attacks"
CLEAN_ONLY_CLAUSE = "the purifier is trained on clean data only"

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
                 "~45% clean accuracy). l_inf eps 0.3 (the paper's MNIST size); FGSM one step; "
                 "PGD 40 steps of 0.01 from a uniform random start. Adaptive PGD: full gradient "
                 "through encoder, straight-through quantiser and decoder, and identity-BPDA, "
                 "each with EOT over 8 latent samples per step; per example the stronger one."),
    },
    metric="pgd_greybox_acc",
    higher_is_better=True,
    arms=ARMS,
    # The paper's gains under grey-box PGD are tens of points (MNIST: near 0 -> ~90%); 10 points
    # is a clear, conservative bar, for FGSM as for PGD. The white-box guard asks for a real
    # (5-point) gain under the strongest adaptive attack we run, because the abstract claims
    # white-box resilience.
    comparisons=(Comparison("quantised", "none", "superiority", min_effect=0.10,
                            clause=PGD_CLAUSE),),
    guards=(Guard("fgsm_greybox_acc", higher_is_better=True, kind="superiority", min_effect=0.10,
                  clause=FGSM_CLAUSE),
            Guard("pgd_adaptive_acc", higher_is_better=True, kind="superiority", min_effect=0.05,
                  clause=WHITE_BOX_CLAUSE)),
    clauses=(PGD_CLAUSE, FGSM_CLAUSE, WHITE_BOX_CLAUSE, BLACK_BOX_CLAUSE, COLLAPSE_CLAUSE,
             CLEAN_ONLY_CLAUSE),
    untested=(
        Untested(BLACK_BOX_CLAUSE, "no substitute classifier is trained to transfer attacks from; "
                 "the grey-box attacks use the true classifier's gradients, which is at least as "
                 "strong an attacker as a transfer from a substitute"),
        Untested(COLLAPSE_CLAUSE, "a condition on the setting, not a comparison between arms: "
                 "the full tier takes the paper's MNIST attack size so that it holds, and the "
                 "none arm's pgd_greybox_acc and fgsm_greybox_acc show whether it does"),
        Untested(CLEAN_ONLY_CLAUSE, "true by construction: the purifiers see clean training "
                 "images only, never labels or adversarial examples"),
    ),
    budget=Budget(unit="purifier epochs", ours=60, paper=None,
                  note=("the paper's training length is not available offline; our purifier's "
                        "training loss changes by under 3% over its last 15 epochs (curve "
                        "purifier_loss), so a longer run would barely change the purifier")),
    revisions=(
        Revision(2, "fidelity pass (issue 17), declared before rerunning: attacks at the paper's "
                    "MNIST size (eps 0.3, PGD 40 x 0.01, random start) instead of eps 0.1, where "
                    "the undefended classifier kept 52%; the adaptive attack differentiates "
                    "through encoder, straight-through quantiser and decoder with EOT (the "
                    "identity-BPDA attack stays as pgd_bpda_identity_acc) and pgd_adaptive_acc "
                    "is the per-example stronger of the two; FGSM grey-box guard; clauses, "
                    "budget and resolution declared"),
    ),
    tiers={
        "smoke": dict(_COMMON, classifier_epochs=5, purifier_epochs=5, n_test=60, pgd_steps=3,
                      pgd_alpha=0.1, eot=2),
        "full": dict(_COMMON, purifier_epochs=60, n_test=None, pgd_steps=40),
    },
    seeds={"smoke": 2, "full": 5},
    paper_value="MNIST, grey-box PGD: undefended near 0%, purified ~90% (paper's tables)",
    curves=("purifier_loss",),
    extra_metrics=("clean_acc", "fgsm_greybox_acc", "fgsm_adaptive_acc", "pgd_bpda_identity_acc",
                   "pgd_fullgrad_acc", "pgd_adaptive_acc"),
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
        # without a defence every white-box attack is the grey-box one
        defended = classifier
        x_fgsm_adaptive = x_fgsm
        x_pgd_full = x_pgd_identity = x_pgd_adaptive = x_pgd
    else:
        purifier, losses = _train_purifier(arm, data, cfg, gen)
        for p in purifier.parameters():
            p.requires_grad_(False)
        defended = PurifiedClassifier(purifier, classifier, backward="full")
        identity = PurifiedClassifier(purifier, classifier, backward="identity")
        # only the variational purifier is random; EOT over a deterministic one is wasted work
        eot = cfg["eot"] if purifier.variational else 1
        x_fgsm_adaptive = fgsm(defended, x, y, eps, eot=eot)
        x_pgd_full = pgd(defended, x, y, eps, alpha, steps, random_start=True, generator=gen,
                         eot=eot)
        x_pgd_identity = pgd(identity, x, y, eps, alpha, steps, random_start=True, generator=gen,
                             eot=eot)
        x_pgd_adaptive = strongest_per_example(defended, [x_pgd_full, x_pgd_identity], y, eot=eot)
        curves["purifier_loss"] = {"x": list(range(1, len(losses) + 1)), "y": losses}
        info["encoder_lipschitz_bound"] = purifier.encoder_lipschitz_bound()
    metrics = {"clean_acc": accuracy(defended, x, y),
               "fgsm_greybox_acc": accuracy(defended, x_fgsm, y),
               "pgd_greybox_acc": accuracy(defended, x_pgd, y),
               "fgsm_adaptive_acc": accuracy(defended, x_fgsm_adaptive, y),
               "pgd_bpda_identity_acc": accuracy(defended, x_pgd_identity, y),
               "pgd_fullgrad_acc": accuracy(defended, x_pgd_full, y),
               "pgd_adaptive_acc": accuracy(defended, x_pgd_adaptive, y)}
    info["undefended_clean_acc"] = accuracy(classifier, x, y)
    return RunOutput(metrics=metrics, curves=curves, info=info,
                     resolution={name: 1.0 / len(y) for name in metrics})
