"""Train a language model on a :class:`~priorlab.lm.corpus.TokenSchedule` and measure it.

The optimiser and schedule follow google-deepmind/nanodo (nanodo/optimizer.py,
nanodo/configs/default.py): AdamW with betas (0.9, 0.98), eps 1e-9, decoupled weight decay on
every parameter (scaled by the current learning rate, as torch's AdamW and optax's adamw both
do), a linear warm-up from 0.1x to the peak learning rate, then cosine decay to 0.1x the peak.
The loop is :func:`priorlab.train.fit`, so any :class:`~priorlab.hooks.Adapter` plugs in.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.hooks import Adapter
from priorlab.lm.corpus import CharCorpus, TokenSchedule, held_out_windows, repeated_token_budget
from priorlab.lm.model import TinyCausalLM, next_token_loss
from priorlab.train import fit


def mean_token_loss(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` on ``(n, L + 1)`` windows.

    Runs in eval mode (dropout off) without gradients and restores the model's mode.
    """
    if not torch.is_tensor(windows) or windows.dim() != 2 or windows.shape[1] < 2:
        got = getattr(windows, "shape", type(windows).__name__)
        raise PriorlabError("windows must be a (n, seq_len + 1) tensor of token ids with "
                            f"seq_len >= 1, got {got}")
    if windows.shape[0] == 0:
        raise PriorlabError("windows is empty; pass at least one evaluation window")
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for chunk in windows.split(batch_size):
            total += float(next_token_loss(model(chunk[:, :-1]), chunk[:, 1:])) * chunk.shape[0]
    model.train(was_training)
    return total / windows.shape[0]


class _WarmupCosine(Adapter):
    """Linear warm-up from ``floor * lr`` to ``lr``, then cosine decay to ``floor * lr``."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                 floor: float):
        def factor(step: int) -> float:
            if step < warmup_steps:
                return floor + (1.0 - floor) * step / warmup_steps
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def after_step(self, ctx) -> None:
        self.scheduler.step()


@dataclass
class LMRun:
    """What :func:`train_lm` measured. Losses are mean nats per token."""

    held_out_loss: float  # on the held-out windows, at the end
    train_loss: float  # on (up to eval_tokens of) the unique training windows, at the end
    steps: int
    tokens: int  # training tokens processed (the budget, less a dropped partial batch)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def generalisation_gap(self) -> float:
        return self.held_out_loss - self.train_loss


def _finite_positive(name: str, value, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise PriorlabError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def train_lm(model: nn.Module, schedule: TokenSchedule, *, batch_size: int, lr: float,
             weight_decay: float = 0.0, held_out: torch.Tensor,
             betas: tuple[float, float] = (0.9, 0.98),
             eps: float = 1e-9, warmup_fraction: float = 0.05, final_lr_fraction: float = 0.1,
             eval_points: int = 8, eval_tokens: int = 16_384,
             adapters: tuple[Adapter, ...] = ()) -> LMRun:
    """Train ``model`` once through ``schedule`` and report held-out and training loss.

    ``held_out`` is a fixed ``(n, seq_len + 1)`` evaluation set (see
    :func:`~priorlab.lm.corpus.held_out_windows`); it is scored ``eval_points`` times, evenly
    spaced in steps, giving the ``held_out_loss`` curve (x = training tokens seen).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise PriorlabError(f"batch_size must be a positive integer, got {batch_size!r}")
    lr = _finite_positive("lr", lr)
    weight_decay = _finite_positive("weight_decay", weight_decay, allow_zero=True)
    if not (len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
        raise PriorlabError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not 0.0 <= warmup_fraction < 1.0 or not 0.0 <= final_lr_fraction <= 1.0:
        raise PriorlabError("warmup_fraction must lie in [0, 1) and final_lr_fraction in [0, 1], "
                            f"got {warmup_fraction!r} and {final_lr_fraction!r}")
    total_steps = schedule.num_batches(batch_size)
    if not isinstance(eval_points, int) or not 1 <= eval_points <= total_steps:
        raise PriorlabError(f"eval_points must be an integer in [1, {total_steps}] (the number of "
                            f"steps at batch_size={batch_size}), got {eval_points!r}")
    if not isinstance(eval_tokens, int) or isinstance(eval_tokens, bool) or eval_tokens < 1:
        raise PriorlabError(f"eval_tokens must be a positive integer, got {eval_tokens!r}")
    seq_len = schedule.windows.shape[1] - 1
    if not torch.is_tensor(held_out) or held_out.dim() != 2 or held_out.shape[1] != seq_len + 1:
        raise PriorlabError(f"held_out must have shape (n, {seq_len + 1}) to match the schedule's "
                            f"windows, got {getattr(held_out, 'shape', type(held_out).__name__)}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, eps=eps,
                                  weight_decay=weight_decay)
    warmup_steps = int(round(warmup_fraction * total_steps))
    lr_schedule = _WarmupCosine(optimizer, total_steps, warmup_steps, final_lr_fraction)
    # fit() runs "epochs"; here each one is a chunk of steps that ends with an evaluation
    boundaries = [round(i * total_steps / eval_points) for i in range(eval_points + 1)]
    chunk_sizes = iter([end - begin
                        for begin, end in zip(boundaries[:-1], boundaries[1:], strict=True)])
    batches = schedule.batches(batch_size)

    def next_chunk():
        return itertools.islice(batches, next(chunk_sizes))

    history = fit(model, next_chunk, optimizer, next_token_loss, epochs=eval_points,
                  adapters=[lr_schedule, *adapters],
                  evaluate=lambda m: {"held_out_loss": mean_token_loss(m, held_out)},
                  show_progress=False)
    train_windows = schedule.windows[:max(1, eval_tokens // seq_len)]
    tokens_seen = [float(b * batch_size * seq_len) for b in boundaries[1:]]
    return LMRun(
        held_out_loss=history["held_out_loss"][-1],
        train_loss=mean_token_loss(model, train_windows),
        steps=total_steps, tokens=total_steps * batch_size * seq_len,
        curves={"held_out_loss": {"x": tokens_seen, "y": list(history["held_out_loss"])},
                "train_loss": {"x": tokens_seen, "y": list(history["loss/task"])}})


def train_at_budget(corpus: CharCorpus, *, total_tokens: int, repetitions: int, seed: int,
                    batch_size: int, lr: float, weight_decay: float = 0.0, dropout: float = 0.0,
                    seq_len: int = 64, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                    eval_tokens: int = 16_384, eval_points: int = 8) -> LMRun:
    """One run of the repetition experiment: a fresh :class:`TinyCausalLM` trained on
    ``total_tokens`` tokens of ``corpus.train`` made of ``total_tokens // repetitions`` unique
    ones, scored on a fixed held-out set of up to ``eval_tokens`` tokens.

    ``seed`` fixes the initialisation, the unique slice and the data order; runs with the same
    seed but different ``repetitions`` or regularisation share the initialisation, and their
    unique data are nested, so they compare paired.
    """
    generator = torch.Generator().manual_seed(seed)
    if total_tokens >= corpus.train.numel():
        raise PriorlabError(f"total_tokens={total_tokens} exceeds the training stream "
                            f"({corpus.train.numel()} tokens); lower it")
    # the offset depends on the seed and the budget only, so every repetition count gets a
    # prefix of the same slice
    start = int(torch.randint(0, corpus.train.numel() - total_tokens, (1,), generator=generator))
    schedule = repeated_token_budget(corpus.train, total_tokens, repetitions, seq_len=seq_len,
                                     generator=generator, start=start)
    torch.manual_seed(seed)
    model = TinyCausalLM(corpus.vocab_size, seq_len=seq_len, d_model=d_model, n_layers=n_layers,
                         n_heads=n_heads, dropout=dropout)
    result = train_lm(model, schedule, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      held_out=held_out_windows(corpus.held_out, seq_len, eval_tokens),
                      eval_points=eval_points, eval_tokens=eval_tokens)
    result.info.update(unique_tokens=schedule.unique_tokens, epochs=schedule.epochs,
                       slice_start=schedule.start,
                       parameters=sum(p.numel() for p in model.parameters()),
                       corpus_fingerprint=corpus.fingerprint)
    return result
