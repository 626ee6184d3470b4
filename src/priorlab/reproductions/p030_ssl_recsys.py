"""Paper 30, SSL for item recommendations: item-tower InfoNCE on masked views lifts recall, most on the tail.

MovieLens-100k (943 users, 1,682 items, every rating an implicit positive), split per user in time:
the last 10% of each user's interactions are the test set, the 10% before them validation, the
rest training. A two-tower model (user tower: id, age bucket, gender, occupation, zip digit; item
tower: id, year, decade, genres, first genre, title words) is trained with the in-batch softmax
over cosine similarities with the logQ correction. The SSL arms add alpha x the item-tower InfoNCE
between two complementary masked views of items drawn uniformly from the catalogue (RFM: random
halves; CFM: a seed feature plus its highest-mutual-information partners). Retrieval ranks all
items a user has not interacted with before; recall@K is the share of held-out (user, item) pairs
whose item is in the user's top K. Slices: head = the 10% most popular items in training, tail =
the rest.

Tuning, equal budget, done once before the claim was declared (pilot seed 100, not an
evaluation seed; validation recall@50; see ``PILOT``): the baseline's temperature and each SSL
arm's alpha over a 4-value grid each; the selected values are fixed in the tier config.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from priorlab.data.recsys import load_movielens_100k
from priorlab.errors import did_you_mean
from priorlab.functional.ssl_recsys import (
    correlated_feature_masking,
    feature_mutual_information,
    item_ssl_loss,
    random_feature_masking,
)
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested
from priorlab.nn.two_tower import TwoTower
from priorlab.seed import seed_everything
from priorlab.train import shuffled_batches

ARMS = {"baseline": None, "ssl_rfm": "rfm", "ssl_cfm": "cfm"}

# Validation recall@50 of the pre-declaration tuning pilot (seed 100, full-tier setting): the
# baseline's temperature, and alpha for each SSL arm at temperature 0.1; equal grids of 4. (The
# SSL rows were measured while SSL sampling still shared the batch-order random stream.)
PILOT = {
    "baseline": {"tau": {0.05: 0.2369, 0.1: 0.2356, 0.2: 0.2385, 0.4: 0.2332}},
    "ssl_cfm": {"alpha": {0.03: 0.2442, 0.1: 0.2454, 0.3: 0.2385, 1.0: 0.2330}},
    "ssl_rfm": {"alpha": {0.03: 0.2355, 0.1: 0.2396, 0.3: 0.2354, 1.0: 0.2324}},
}

_COMMON = {"k": 50, "head_fraction": 0.1, "embed_dim": 32, "hidden": 128, "out_dim": 64,
           "batch_size": 1024, "ssl_batch_size": 512, "lr": 3e-3, "tau": 0.1,
           "baseline_tau": 0.2, "alpha_cfm": 0.1, "alpha_rfm": 0.1, "ssl_tau": 0.1,
           "ssl_dropout": 0.1}

CLAUSE_RECALL = "the auxiliary SSL loss (CFM) improves overall recall@K"
CLAUSE_TAIL = "the gain is larger on tail items (slices that lack supervision)"
CLAUSE_CFM = "correlated feature masking beats random feature masking"
CLAUSE_SCALE = "the gains hold at web scale (Wikipedia, app store; millions of items)"

CLAIM = Claim(
    seed_id=30,
    method="ssl-recsys",
    statement=("Adding a self-supervised InfoNCE loss on the item tower, between two views made by "
               "correlated feature masking, improves a two-tower retriever's recall@K, more on "
               "tail items than on head items, and more than random feature masking does."),
    setting={
        "smoke": ("MovieLens-100k split as in full, tiny towers, 1 epoch; checks that the "
                  "pipeline runs."),
        "full": ("MovieLens-100k, per-user time split 80/10/10 (80,024 / 9,988 / 9,988 pairs). "
                 "Towers: one 32-d mean-pooled embedding per feature, MLP 128 -> 64; cosine "
                 "scores; in-batch softmax with logQ correction, batch 1024, Adam lr 3e-3, 3 "
                 "epochs (234 steps). SSL: alpha x InfoNCE (tau 0.1) on 512 items drawn uniformly "
                 "per step, complementary halves of the 6 item features masked, 10% token dropout "
                 "on multi-valued features. Tuned once on validation (pilot seed 100, grids of "
                 "4): baseline tau in {0.05, 0.1, 0.2, 0.4} -> 0.2; SSL arms alpha in "
                 "{0.03, 0.1, 0.3, 1} at tau 0.1 -> 0.1 for both CFM and RFM. Metric: test "
                 "recall@50 over all items the user had not rated before. The paper runs "
                 "web-scale corpora (Wikipedia links, app store) with far larger batches and "
                 "more steps."),
    },
    metric="recall",
    higher_is_better=True,
    arms=tuple(ARMS),
    comparisons=(
        # half a point of recall@50 (~50 of 9,988 test pairs): the smallest gain worth an extra loss
        Comparison(method="ssl_cfm", baseline="baseline", kind="superiority", min_effect=0.005,
                   clause=CLAUSE_RECALL),
        # (cfm - baseline) - (rfm - baseline) = cfm - rfm; written as an interaction so the tail
        # guard (a statement about SSL vs no SSL) does not apply to it. A fifth of a point: the
        # paper reports CFM ahead of RFM by a small margin.
        Comparison(method="ssl_cfm", baseline="baseline", minus=("ssl_rfm", "baseline"),
                   kind="superiority", min_effect=0.002, clause=CLAUSE_CFM),
    ),
    # log(recall_tail / recall_head): its paired effect is log(relative tail gain) - log(relative
    # head gain), so > 0 means the relative gain is larger on the tail (the paper reports
    # relative gains per slice). 0.02: the tail's relative gain exceeds the head's by ~2%.
    guards=(Guard(metric="tail_head_log_ratio", higher_is_better=True, kind="superiority",
                  min_effect=0.02, clause=CLAUSE_TAIL),),
    clauses=(CLAUSE_RECALL, CLAUSE_TAIL, CLAUSE_CFM, CLAUSE_SCALE),
    untested=(Untested(CLAUSE_SCALE, "CPU budget: MovieLens-100k (1,682 items) stands in for the "
                                     "paper's web-scale corpora"),),
    budget=Budget("epochs", ours=3, paper=None,
                  note=("the paper trains on web-scale logs for a number of steps we could not "
                        "retrieve; in 3 epochs the baseline's validation recall@50 rises from "
                        "0.18 to 0.24 and is still creeping up (CPU budget); every arm gets the "
                        "same 3")),
    tiers={
        "smoke": {**_COMMON, "epochs": 1, "max_steps_per_epoch": 5, "batch_size": 256,
                  "ssl_batch_size": 64, "embed_dim": 4, "hidden": 8, "out_dim": 4},
        "full": {**_COMMON, "epochs": 3, "max_steps_per_epoch": None},
    },
    # one seed (three arms) takes ~26 CPU-seconds: 10 seeds fit the full-tier budget with room
    seeds={"smoke": 1, "full": 10},
    paper_value=("not retrieved here (paper text unavailable offline); the paper reports relative "
                 "recall@K gains of SSL on Wikipedia and app-store retrieval, larger on tail items, "
                 "and CFM ahead of RFM"),
    curves=("val_recall",),
    extra_metrics=("recall_tail", "recall_head", "recall_at_10", "val_recall"),
)


@lru_cache(maxsize=1)
def _mutual_information() -> np.ndarray:
    return feature_mutual_information(load_movielens_100k().items.primary_codes())


def _seen(pairs: list[torch.Tensor], n_users: int, n_items: int) -> torch.Tensor:
    seen = torch.zeros(n_users, n_items, dtype=torch.bool)
    for p in pairs:
        seen[p[:, 0], p[:, 1]] = True
    return seen


def _hits(model: TwoTower, data, pairs: torch.Tensor, exclude: torch.Tensor, k: int) -> torch.Tensor:
    """Per held-out pair: is its item in the user's top k among items not in ``exclude``?"""
    model.eval()
    scores = model.scores(data.users.tokens, data.items.tokens).masked_fill(exclude, -math.inf)
    model.train()
    top = torch.zeros_like(exclude)
    top.scatter_(1, scores.topk(k, dim=1).indices, True)
    return top[pairs[:, 0], pairs[:, 1]]


def _train(cfg: dict, seed: int, masking: str | None, tau: float, alpha: float) -> dict:
    data = load_movielens_100k()
    seed_everything(seed)
    model = TwoTower(data.users.vocab_sizes, data.items.vocab_sizes, cfg["embed_dim"], cfg["hidden"],
                     cfg["out_dim"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    generator = torch.Generator().manual_seed(seed)
    # its own stream for SSL items, masks and dropout: every arm of a seed sees the same batches
    ssl_generator = torch.Generator().manual_seed(seed + 7919)
    exclude_val = _seen([data.train], data.n_users, data.n_items)
    # logQ correction: an item's chance of being in a batch is its share of training pairs
    log_q = torch.log(data.popularity.double() / len(data.train)).float()
    val_curve = []
    for _ in range(cfg["epochs"]):
        batches = shuffled_batches(len(data.train), cfg["batch_size"], generator, drop_last=True)
        for idx in batches[:cfg["max_steps_per_epoch"]]:
            pairs = data.train[idx]
            loss = model.loss(data.users.rows(pairs[:, 0]), data.items.rows(pairs[:, 1]), tau=tau,
                              log_q=log_q[pairs[:, 1]])
            if masking is not None:
                items = torch.randint(data.n_items, (cfg["ssl_batch_size"],), generator=ssl_generator)
                n_feat = len(data.items.tokens)
                masks = (random_feature_masking(n_feat, len(items), ssl_generator) if masking == "rfm"
                         else correlated_feature_masking(_mutual_information(), len(items), ssl_generator))
                loss = loss + alpha * item_ssl_loss(model.item_tower, data.items.rows(items), masks,
                                                    tau=cfg["ssl_tau"], dropout=cfg["ssl_dropout"],
                                                    generator=ssl_generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val_curve.append(float(_hits(model, data, data.val, exclude_val, cfg["k"]).float().mean()))
    exclude_test = _seen([data.train, data.val], data.n_users, data.n_items)
    hits = _hits(model, data, data.test, exclude_test, cfg["k"])
    hits10 = _hits(model, data, data.test, exclude_test, 10)
    head = data.head_items(cfg["head_fraction"])[data.test[:, 1]]
    floor = 1 / len(data.test)  # keeps the log finite if a slice retrieves nothing
    recall_head = float(hits[head].float().mean())
    recall_tail = float(hits[~head].float().mean())
    return {"val_recall": val_curve[-1], "val_curve": val_curve, "recall": float(hits.float().mean()),
            "recall_at_10": float(hits10.float().mean()), "recall_head": recall_head,
            "recall_tail": recall_tail, "n_head": int(head.sum()), "n_tail": int((~head).sum()),
            "tail_head_log_ratio": math.log(max(recall_tail, floor)) - math.log(max(recall_head, floor))}


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    masking = ARMS[arm]
    tau = cfg["baseline_tau"] if masking is None else cfg["tau"]
    alpha = 0.0 if masking is None else cfg[f"alpha_{masking}"]
    out = _train(cfg, seed, masking, tau=tau, alpha=alpha)
    metrics = {key: out[key] for key in ("recall", "recall_at_10", "recall_head", "recall_tail",
                                         "tail_head_log_ratio", "val_recall")}
    n_test = out["n_head"] + out["n_tail"]
    # one test pair changes the log ratio by about 1 / (n_tail * recall_tail)
    log_step = 1 / (out["n_tail"] * max(out["recall_tail"], 1 / n_test))
    return RunOutput(
        metrics=metrics,
        curves={"val_recall": {"x": [float(e + 1) for e in range(len(out["val_curve"]))],
                               "y": out["val_curve"]}},
        info={"masking": masking, "tau": tau, "alpha": alpha, "pilot_val_recall": PILOT[arm],
              "n_head_test": out["n_head"], "n_tail_test": out["n_tail"]},
        resolution={"recall": 1 / n_test, "recall_at_10": 1 / n_test, "val_recall": 1 / n_test,
                    "recall_head": 1 / out["n_head"], "recall_tail": 1 / out["n_tail"],
                    "tail_head_log_ratio": log_step},
    )
