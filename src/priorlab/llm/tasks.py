"""Verifiable synthetic text tasks for post-training experiments, a character vocabulary for them,
and a tiny Llama pretrained here on their format (cached per configuration and seed).

Tasks (answers have a fixed length, so a 0/1 exact-match reward verifies them):
  ``add``: two-digit addition, ``"37+58="`` -> ``"095"`` (the sum, zero-padded to 3 digits);
  ``rev``: reversal of 4 letters from a-h, ``"|bcha="`` -> ``"ahcb"``;
  ``sort``: the same 4 letters sorted, ``">bcha="`` -> ``"abch"``.
Each task's problems are split once (independently of the run seed) into disjoint train / val /
test pools, so every seed and arm is scored on the same test problems.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from priorlab.errors import did_you_mean
from priorlab.generative.gan import _atomic_save
from priorlab.llm.loader import cache_dir, tiny_llama
from priorlab.validation import check_number, check_tensor

VOCAB = ("<pad>",) + tuple("0123456789+=|>abcdefgh")
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}
TASKS = ("add", "rev", "sort")
_N_TEST, _N_VAL = 500, 300


def encode(text: str) -> list[int]:
    return [_INDEX[ch] for ch in text]


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids if int(i) != 0)


@dataclass(frozen=True)
class TaskSplit:
    """Prompts ``(n, Lp)`` and answers ``(n, La)`` as token ids of one task and split."""
    task: str
    prompts: torch.Tensor
    answers: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)


def _problems(task: str) -> list[tuple[str, str]]:
    if task == "add":
        return [(f"{a}+{b}=", f"{a + b:03d}") for a in range(10, 100) for b in range(10, 100)]
    letters = "abcdefgh"
    words = [a + b + c + d for a in letters for b in letters for c in letters for d in letters]
    if task == "rev":
        return [(f"|{w}=", w[::-1]) for w in words]
    return [(f">{w}=", "".join(sorted(w))) for w in words]


def task_splits(task: str) -> dict[str, TaskSplit]:
    """``{"train", "val", "test"}`` of one task (500 test and 300 val problems, the rest train)."""
    if task not in TASKS:
        raise did_you_mean(str(task), TASKS, "task")
    problems = _problems(task)
    order = torch.randperm(len(problems), generator=torch.Generator().manual_seed(1234))
    ranges = {"test": order[:_N_TEST], "val": order[_N_TEST:_N_TEST + _N_VAL],
              "train": order[_N_TEST + _N_VAL:]}
    return {split: TaskSplit(task, torch.tensor([encode(problems[i][0]) for i in idx.tolist()]),
                             torch.tensor([encode(problems[i][1]) for i in idx.tolist()]))
            for split, idx in ranges.items()}


def answer_loss(model, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning loss: mean cross-entropy of the answer tokens given the prompt."""
    ids = torch.cat([prompts, answers], dim=1)
    logits = model(input_ids=ids).logits[:, prompts.shape[1] - 1:-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), answers.reshape(-1))


@torch.no_grad()
def greedy_answers(model, prompts: torch.Tensor, length: int) -> torch.Tensor:
    """Greedy decoding of ``length`` tokens after each prompt (full recompute: sequences are short)."""
    ids = check_tensor(prompts, "prompts", who="greedy_answers", ndim=2, dtype="integer")
    for _ in range(check_number(length, "length", who="greedy_answers", low=1, integer=True)):
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompts.shape[1]:]


def exact_match(completions: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """0/1 verifiable reward per row: the completion equals the answer token for token."""
    return (completions == answers).all(dim=1).float()


def accuracy(model, split: TaskSplit, batch_size: int = 500) -> float:
    was_training = model.training
    model.eval()
    hits = sum(float(exact_match(greedy_answers(model, split.prompts[i:i + batch_size],
                                                split.answers.shape[1]),
                                 split.answers[i:i + batch_size]).sum())
               for i in range(0, len(split), batch_size))
    model.train(was_training)
    return hits / len(split)


def task_llama(arch: dict, seed: int):
    """A tiny Llama over :data:`VOCAB` (``arch``: hidden, layers, heads, intermediate)."""
    return tiny_llama(vocab_size=len(VOCAB), max_positions=32, seed=seed, **arch)


def pretrained_task_llama(arch: dict, mix: dict[str, float], steps: int, lr: float,
                          batch_size: int, seed: int):
    """A :func:`task_llama` trained with Adam on the answer cross-entropy of a task mixture
    (``mix``: task -> share of the batches), standing in for a base model that already knows the
    tasks' format and partly solves them. Cached under ``cache_dir()/task_llama`` per settings."""
    key = json.dumps({"arch": arch, "mix": mix, "steps": steps, "lr": lr, "batch": batch_size,
                      "seed": seed}, sort_keys=True)
    path = cache_dir() / "task_llama" / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".pt")
    model = task_llama(arch, seed)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    train = {task: task_splits(task)["train"] for task in mix}
    names = list(mix)
    shares = torch.tensor([float(mix[t]) for t in names])
    draws = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        task = names[int(torch.multinomial(shares, 1, generator=draws))]
        idx = torch.randint(len(train[task]), (batch_size,), generator=draws)
        loss = answer_loss(model, train[task].prompts[idx], train[task].answers[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _atomic_save(model.state_dict(), path)
    return model.eval()
