"""Reproduction of "Rethinking Conventional Wisdom in Machine Learning: From Generalization to
Scaling" (seed 6): explicit L2 regularisation (weight decay) and small batches help when data
repeat (the generalisation-centric regime) and stop helping without repetition (the
scaling-centric, online regime).

Every arm trains the same tiny character-level transformer on the same number of training
tokens, either online (every token seen once) or repeated (16 epochs over 1/16 of the data).
Per regime: the reference arm (batch 16, no weight decay), ``_wd`` (AdamW weight decay) and
``_large_batch`` (batch 64 at the same learning rate, so 4x fewer steps of less noisy gradients).

How "stops helping" is tested. The harness decides superiority and non-inferiority only; it
cannot assert "no effect". So each principle gets two comparisons:
- repeated regime, superiority: the conventional choice (weight decay; small batch) lowers
  held-out loss by at least MIN_EFFECT;
- online regime, non-inferiority with the same number as margin, read the other way round:
  *dropping* the conventional choice (no weight decay; large batch) costs less than MIN_EFFECT,
  i.e. whatever the choice still buys online is below what we call a meaningful effect.
A benefit online that is real but smaller than MIN_EFFECT still counts as "stopped helping";
a harm online passes too (the paper's claim is that the benefit disappears, and harm is allowed).
"""

from __future__ import annotations

import functools

from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, Revision, RunOutput
from priorlab.lm.corpus import bits_per_char, load_stdlib_corpus
from priorlab.lm.train import train_at_budget
from priorlab.seed import seed_everything

REPEATED_EPOCHS = 16
# The smallest held-out loss difference we call meaningful: 0.02 nats per character, about 1%
# of the online loss. Fixed before any run; used as min_effect and as the non-inferiority margin.
MIN_EFFECT = 0.02
CLAUSES = ("explicit L2 regularisation helps when training data repeat",
           "explicit L2 regularisation stops helping without repetition (online)",
           "the implicit regularisation of small batches helps when training data repeat",
           "small batches stop helping without repetition (online)")

CLAIM = Claim(
    seed_id=6,
    method="scaling-regime",
    statement=("Regularisation-based principles of the generalisation era, explicit L2 "
               "regularisation and the implicit regularisation of small batches, help when "
               "training data repeat but stop helping in the no-repetition (online) regime of "
               "language-model pretraining."),
    setting={
        "smoke": ("1-layer d=32 char transformer, 16,384 training tokens, online vs 16x repeated; "
                  "checks that the pipeline runs, says nothing about the claim."),
        "full": ("Char-level LM on the running Python's standard-library sources (top-level .py "
                 "files, every 10th file held out): pre-LN transformer, 2 layers, d=64, 4 heads, "
                 "context 64 (109k parameters), AdamW (0.9, 0.98) lr 1e-2 with 5% warm-up and "
                 "cosine decay to 1e-3, 524,288 training tokens, online (524,288 unique) or "
                 "repeated (32,768 unique, 16 epochs). Weight decay 0.7 (integrated decay "
                 "sum_t lr_t * wd about 2, like the ResNet/CIFAR recipe's 5e-4 at lr 0.1 for "
                 "~80k steps) vs 0; batch 16 (512 steps) vs 64 (128 steps) at the same lr. "
                 "Metric: held-out loss on 16,384 fixed held-out characters at the end. One model "
                 "size: the paper's scaling-law crossover (several widths) is not tested. The "
                 "paper's setting is C4 decoder-only LMs (NanoDO) against CIFAR-10 ResNets."),
    },
    metric="held_out_loss",
    higher_is_better=False,
    arms=("repeated", "repeated_wd", "repeated_large_batch",
          "online", "online_wd", "online_large_batch"),
    comparisons=(
        # with repetition, L2 helps
        Comparison(method="repeated_wd", baseline="repeated", kind="superiority",
                   min_effect=MIN_EFFECT, clause=CLAUSES[0]),
        # without repetition, dropping L2 costs less than MIN_EFFECT ("stops helping")
        Comparison(method="online", baseline="online_wd", kind="non-inferiority",
                   margin=MIN_EFFECT, clause=CLAUSES[1]),
        # with repetition, small batches help
        Comparison(method="repeated", baseline="repeated_large_batch", kind="superiority",
                   min_effect=MIN_EFFECT, clause=CLAUSES[2]),
        # without repetition, a large batch costs less than MIN_EFFECT ("stops helping")
        Comparison(method="online_large_batch", baseline="online", kind="non-inferiority",
                   margin=MIN_EFFECT, clause=CLAUSES[3]),
    ),
    clauses=CLAUSES,
    revisions=(Revision(2, "the paper's budget is declared as its lower bound (1e9 tokens; its LMs "
                           "train on billions) instead of 'not reported', so that a negative result "
                           "at our 524k tokens reads as under budget; run() is unchanged"),),
    budget=Budget(unit="training tokens", ours=524_288, paper=1e9,
                  note=("a lower bound: the paper's C4 runs (NanoDO decoder-only LMs, far larger "
                        "than our 109k parameters) train for many billions of tokens; their exact "
                        "counts are not available here")),
    # nats per character over 16,384 held-out characters: one character's loss moving by 1.6
    # nats moves the mean by 1e-4, the floor below which differences mean nothing
    resolution={"held_out_loss": 1e-4},
    tiers={
        "smoke": {"total_tokens": 16_384, "seq_len": 32, "d_model": 32, "n_layers": 1,
                  "n_heads": 2, "small_batch": 8, "large_batch": 32, "lr": 1e-2,
                  "weight_decay": 0.7, "eval_tokens": 2_048, "eval_points": 2},
        "full": {"total_tokens": 524_288, "seq_len": 64, "d_model": 64, "n_layers": 2,
                 "n_heads": 4, "small_batch": 16, "large_batch": 64, "lr": 1e-2,
                 "weight_decay": 0.7, "eval_tokens": 16_384, "eval_points": 8},
    },
    seeds={"smoke": 2, "full": 5},
    paper_value=("Qualitative: L2 regularisation, small batches and large learning rates improve "
                 "CIFAR-10 test error but not C4 pretraining loss (Section 2)."),
    curves=("held_out_loss", "train_loss"),
    extra_metrics=("held_out_bits_per_char", "train_loss", "generalisation_gap"),
)


@functools.lru_cache(maxsize=1)
def _corpus():
    return load_stdlib_corpus()


def _parse_arm(arm: str) -> tuple[int, bool, bool]:
    """-> (repetitions, weight decay on, large batch)."""
    if arm not in CLAIM.arms:
        raise did_you_mean(arm, CLAIM.arms, "arm")
    regime, _, variant = arm.partition("_")
    repetitions = REPEATED_EPOCHS if regime == "repeated" else 1
    return repetitions, variant == "wd", variant == "large_batch"


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    repetitions, weight_decay_on, large_batch = _parse_arm(arm)
    seed_everything(seed)
    batch_size = cfg["large_batch"] if large_batch else cfg["small_batch"]
    result = train_at_budget(
        _corpus(), total_tokens=cfg["total_tokens"], repetitions=repetitions, seed=seed,
        batch_size=batch_size, lr=cfg["lr"],
        weight_decay=cfg["weight_decay"] if weight_decay_on else 0.0,
        seq_len=cfg["seq_len"], d_model=cfg["d_model"], n_layers=cfg["n_layers"],
        n_heads=cfg["n_heads"], eval_tokens=cfg["eval_tokens"], eval_points=cfg["eval_points"])
    metrics = {"held_out_loss": result.held_out_loss,
               "held_out_bits_per_char": bits_per_char(result.held_out_loss),
               "train_loss": result.train_loss,
               "generalisation_gap": result.generalisation_gap}
    info = {"repetitions": repetitions, "batch_size": batch_size, "steps": result.steps,
            "weight_decay": cfg["weight_decay"] if weight_decay_on else 0.0,
            "tokens": result.tokens, **result.info}
    return RunOutput(metrics=metrics, curves=result.curves, info=info)
