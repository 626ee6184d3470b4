"""Paper 56, generative kernel continual learning: generated supports instead of a coreset.

Split sklearn digits (8x8; 1,078 train / 360 test images before splitting), five two-class
tasks (0/1, 2/3, 4/5, 6/7, 8/9), task-incremental: the task id is given at test time and each
task has its own kernel ridge classifier (linear kernel, learnable ridge / scale / shift) on a
shared MLP feature extractor (64-128-128-64). Arms:

- ``kcl_coreset``: kernel continual learning. ``per_class`` random training images of each
  class are stored (and removed from that task's training set, as in the official KCL code)
  and are the task's support set, then and at every later test.
- ``gkcl``: generative KCL without SupCon. A conditional VAE (latent 8, hidden 64) shared by
  all tasks is trained on each task's data plus generative replay of the old classes from the
  frozen previous generator (generator-only warm-up epochs, then joint epochs); the support
  set of a task is ``per_class`` generated images per class, at training and at every test.
  Nothing from the data is stored.
- ``gkcl_supcon``: ``gkcl`` plus SupCon (temperature 0.07) on the generated support's features.

Equal memory: the coreset stores per_class x 10 classes x 64 floats (12,800 at per_class 20),
at least the generator's 11,216 parameters (both reported in info); the generated support has
the same per_class. Every arm: Adam lr 1e-3 (reset per task), batch 32, the same number of
feature-extractor epochs per task; no hyperparameter is tuned, for any arm. Metric: forgetting
(mean over tasks 0..3 of the drop from their best to their final test accuracy); the average
final accuracy is a guard.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.continual.kernel import KernelRidgeHead
from priorlab.continual.metrics import average_accuracy, backward_transfer, forgetting
from priorlab.continual.streams import split_digits
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested
from priorlab.methods.generative_kernel_cl import (
    ConditionalVAE,
    generated_support,
    generative_kernel_loss,
)
from priorlab.seed import seed_everything

ARMS = {"kcl_coreset": None, "gkcl": 0.0, "gkcl_supcon": 1.0}  # arm -> SupCon weight

_COMMON = {"classes_per_task": 2, "batch_size": 32, "lr": 1e-3, "ridge": 0.1, "hidden": 128,
           "feature_dim": 64, "latent_dim": 8, "generator_hidden": 64, "temperature": 0.07}

CLAUSE_FORGET = ("generative kernel continual learning forgets less than coreset-based kernel "
                 "continual learning, without storing any data")
CLAUSE_GEN_ONLY = ("replaying only on the generative model avoids task interference (the "
                   "generated supports alone, without SupCon, forget less than the coreset)")
CLAUSE_MEMORY = ("at the same memory budget it is more accurate than kernel continual learning "
                 "(+10.1 points on SplitCIFAR100)")
CLAUSE_TENTH = ("with a linear kernel it matches KCL with variational random features at one "
                "tenth of the memory")
CLAUSE_SUPCON = ("the supervised contrastive regulariser makes the generated samples more "
                 "discriminative and improves kernel classification")

CLAIM = Claim(
    seed_id=56,
    method="generative-kernel-cl",
    statement=("Generative kernel continual learning, whose per-task kernel ridge classifiers are "
               "fitted on samples of a shared conditional generator trained with generative "
               "replay, forgets less than coreset-based kernel continual learning without storing "
               "data, is more accurate at the same memory budget, matches KCL with variational "
               "random features at a tenth of the memory, and SupCon on the generated samples "
               "improves it."),
    setting={
        "smoke": ("split digits, 1 warm-up + 1 joint epoch per task, 5 support samples per "
                  "class; checks that the pipeline runs."),
        "full": ("split sklearn digits, five two-class tasks, task-incremental; MLP feature "
                 "extractor 64-128-128-64, linear-kernel ridge classifier per task; 20 support "
                 "samples per class for every arm (coreset: 12,800 stored floats; generator: "
                 "11,216 parameters, conditional VAE latent 8 hidden 64); per task 20 "
                 "generator-only warm-up epochs (generative arms) then 20 epochs of the feature "
                 "extractor (all arms), Adam lr 1e-3, batch 32; SupCon weight 1, temperature "
                 "0.07; nothing tuned. Stand-in for the paper's SplitCIFAR100 / MNIST variants "
                 "and its generator."),
    },
    metric="forgetting",
    higher_is_better=False,
    arms=tuple(ARMS),
    # forgetting: two points (about 1.5 test images of a ~72-image task) is the smallest
    # reduction we call less forgetting
    comparisons=(
        Comparison(method="gkcl_supcon", baseline="kcl_coreset", kind="superiority",
                   min_effect=0.02, clause=CLAUSE_FORGET),
        Comparison(method="gkcl", baseline="kcl_coreset", kind="superiority", min_effect=0.02,
                   clause=CLAUSE_GEN_ONLY),
    ),
    # avg_acc: losing more than two points of final accuracy would make the lower forgetting
    # a trade rather than a gain (the paper claims higher accuracy at equal memory)
    guards=(Guard(metric="avg_acc", higher_is_better=True, kind="non-inferiority", margin=0.02,
                  clause=CLAUSE_MEMORY),),
    clauses=(CLAUSE_FORGET, CLAUSE_GEN_ONLY, CLAUSE_MEMORY, CLAUSE_TENTH, CLAUSE_SUPCON),
    untested=(
        Untested(CLAUSE_TENTH, "KCL with variational random features is not implemented; the "
                               "baseline here is KCL with a linear kernel"),
        Untested(CLAUSE_SUPCON, "the claim's metric is forgetting; SupCon's accuracy effect "
                                "(gkcl_supcon vs gkcl avg_acc) is recorded but not judged"),
    ),
    budget=Budget(unit="epochs per task", ours=20, paper=None,
                  note=("the paper's epochs per task could not be retrieved (no official code, "
                        "paper text not reachable); 20 epochs fit each two-class digits task to "
                        "its plateau and every arm's feature extractor gets the same 20")),
    tiers={
        "smoke": {**_COMMON, "per_class": 5, "gen_epochs": 1, "epochs": 1},
        "full": {**_COMMON, "per_class": 20, "gen_epochs": 20, "epochs": 20},
    },
    seeds={"smoke": 2, "full": 5},
    paper_value=("abstract: on SplitCIFAR100 with a linear kernel, KCL-with-random-features "
                 "accuracy at one tenth of the memory, or +10.1 points at the same memory"),
    curves=("acc_after_task",),
    extra_metrics=("avg_acc", "bwt", "last_task_acc"),
)


def _features(cfg: dict) -> nn.Module:
    h = cfg["hidden"]
    return nn.Sequential(nn.Flatten(), nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                         nn.Linear(h, cfg["feature_dim"]))


def _local(y: torch.Tensor, classes) -> torch.Tensor:
    return (y[:, None] == torch.tensor(classes)[None, :]).float().argmax(1)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size) if len(order[i:i + batch_size]) > 1]


def _split_coreset(task, per_class: int, generator: torch.Generator):
    """Random ``per_class`` training images per class (the coreset) and the rest."""
    keep = torch.ones(len(task.y_train), dtype=torch.bool)
    for c in task.classes:
        members = torch.nonzero(task.y_train == c).flatten()
        keep[members[torch.randperm(len(members), generator=generator)[:per_class]]] = False
    return ((task.x_train[~keep], task.y_train[~keep]), (task.x_train[keep], task.y_train[keep]))


def _replay(previous: ConditionalVAE | None, old_classes: list[int], n: int,
            generator: torch.Generator):
    if previous is None or not old_classes:
        return None
    labels = torch.tensor(old_classes)[torch.randint(len(old_classes), (n,), generator=generator)]
    with torch.no_grad():
        return previous.sample(labels, generator=generator), labels


def _train_generator(cvae, previous, x, y, old_classes, cfg, generator):
    optimizer = torch.optim.Adam(cvae.parameters(), lr=cfg["lr"])
    for _ in range(cfg["gen_epochs"]):
        for idx in _batches(len(y), cfg["batch_size"], generator):
            replay = _replay(previous, old_classes, len(idx), generator)
            gx, gy = (x[idx], y[idx]) if replay is None else (torch.cat([x[idx], replay[0]]),
                                                              torch.cat([y[idx], replay[1]]))
            loss = cvae.elbo_loss(gx, gy)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def _task_accuracy(features, head, support, task) -> float:
    features.eval()
    sx, sy = support
    logits = head(features(sx), sy, features(task.x_test))
    features.train()
    return float((logits.argmax(1) == _local(task.y_test, task.classes)).float().mean())


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    supcon_weight = ARMS[arm]
    generative = supcon_weight is not None
    stream = split_digits(cfg["classes_per_task"], scenario="task-incremental")
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    features = _features(cfg)
    heads = nn.ModuleList(KernelRidgeHead(len(t.classes), ridge=cfg["ridge"]) for t in stream)
    shape = tuple(stream[0].x_train.shape[1:])
    cvae = ConditionalVAE(shape, stream.num_classes, latent_dim=cfg["latent_dim"],
                          hidden=cfg["generator_hidden"]) if generative else None
    coresets, R = [], []
    for i, task in enumerate(stream):
        head = heads[i]
        if generative:
            old = list(stream.seen_classes(i - 1)) if i else []
            previous = copy.deepcopy(cvae).eval() if i else None
            x, y = task.x_train, task.y_train
            _train_generator(cvae, previous, x, y, old, cfg, generator)
            params = [*features.parameters(), *head.parameters(), *cvae.parameters()]
        else:
            (x, y), coreset = _split_coreset(task, cfg["per_class"], generator)
            coresets.append((coreset[0], _local(coreset[1], task.classes)))
            params = [*features.parameters(), *head.parameters()]
        optimizer = torch.optim.Adam(params, lr=cfg["lr"])
        for _ in range(cfg["epochs"]):
            for idx in _batches(len(y), cfg["batch_size"], generator):
                if generative:
                    replay = _replay(previous, old, len(idx), generator)
                    loss, _ = generative_kernel_loss(
                        features, head, cvae, x[idx], y[idx], task.classes,
                        per_class=cfg["per_class"], supcon_weight=supcon_weight,
                        temperature=cfg["temperature"], replay=replay)
                else:
                    sx, sy = coresets[i]
                    loss = F.cross_entropy(head(features(sx), sy, features(x[idx])),
                                           _local(y[idx], task.classes))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        row = []
        for j, past in enumerate(stream.tasks[:i + 1]):
            if generative:  # a fixed draw per (seed, task) so that rows are comparable
                with torch.no_grad():
                    support = generated_support(cvae, past.classes, cfg["per_class"],
                                                generator=torch.Generator().manual_seed(seed * 97 + j))
            else:
                support = coresets[j]
            row.append(_task_accuracy(features, heads[j], support, past))
        R.append(row + [0.0] * (len(stream) - i - 1))
    metrics = {"forgetting": forgetting(R), "avg_acc": average_accuracy(R),
               "bwt": backward_transfer(R), "last_task_acc": R[-1][-1]}
    memory = {"coreset_floats": (cfg["per_class"] * stream.num_classes * int(torch.tensor(shape).prod())
                                 if not generative else 0),
              "generator_parameters": sum(p.numel() for p in cvae.parameters()) if generative else 0,
              "support_per_class": cfg["per_class"]}
    acc_curve = [average_accuracy([row[:k + 1] for row in R[:k + 1]]) for k in range(len(R))]
    n_old = sum(len(t.y_test) for t in stream.tasks[:-1])
    resolution = {"forgetting": 1.0 / n_old, "avg_acc": 1.0 / sum(len(t.y_test) for t in stream)}
    return RunOutput(metrics=metrics, info={"R_test": R, "memory": memory}, resolution=resolution,
                     curves={"acc_after_task": {"x": [float(k + 1) for k in range(len(R))],
                                                "y": acc_curve}})
