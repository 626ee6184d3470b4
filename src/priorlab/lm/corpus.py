"""An offline character-level corpus (the running Python's standard-library sources) and a
data scheduler that fixes the total token budget while varying how often data repeats.

The corpus is the sorted list of top-level ``*.py`` files of the standard-library directory
(``sysconfig.get_paths()["stdlib"]``), read as UTF-8 text. Every tenth file (by sorted position)
is held out, so held-out loss measures prediction on unseen modules. The vocabulary is fixed
(printable ASCII, tab, newline, one unknown symbol), so it never depends on which files exist.

:func:`repeated_token_budget` is the experiment knob of arXiv 2305.13230 and 2409.15156: a
budget of ``total_tokens`` training tokens drawn from ``total_tokens / repetitions`` unique
tokens, i.e. ``repetitions`` epochs over a smaller dataset (``repetitions=1`` is the online,
no-repetition regime).
"""

from __future__ import annotations

import hashlib
import math
import string
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from priorlab.errors import PriorlabError

UNKNOWN = "\x00"  # stands for every character outside the fixed vocabulary
FILE_SEPARATOR = "\n\n"  # between concatenated files
HELD_OUT_EVERY = 10  # file i (sorted) is held out when i % 10 == 9

VOCABULARY = UNKNOWN + "\t\n" + "".join(c for c in string.printable if c.isprintable())


def _ascii_table() -> torch.Tensor:
    # 0 is UNKNOWN; index 128 catches every code point >= 128
    table = torch.zeros(129, dtype=torch.int64)
    for token_id, char in enumerate(VOCABULARY):
        table[ord(char)] = token_id
    return table


_ASCII_TABLE = _ascii_table()


def encode(text: str) -> torch.Tensor:
    """Characters -> int64 token ids; characters outside the vocabulary map to :data:`UNKNOWN`."""
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    codes = torch.from_numpy(code_points)
    # a lookup table over the ASCII range; every other code point is unknown
    return _ASCII_TABLE[codes.clamp(max=_ASCII_TABLE.numel() - 1)]


def decode(tokens: torch.Tensor) -> str:
    """Token ids -> characters (the inverse of :func:`encode` on in-vocabulary text)."""
    ids = tokens.tolist() if torch.is_tensor(tokens) else list(tokens)
    bad = [i for i in ids if not 0 <= i < len(VOCABULARY)]
    if bad:
        raise PriorlabError(f"token id {bad[0]} is outside the vocabulary [0, {len(VOCABULARY)})")
    return "".join(VOCABULARY[i] for i in ids)


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The sorted top-level ``*.py`` files under ``root`` (default: this Python's stdlib dir)."""
    directory = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    if not directory.is_dir():
        raise PriorlabError(f"corpus directory {str(directory)!r} does not exist; pass root= a "
                            "folder of .py files (the default is the Python standard library)")
    files = sorted(p for p in directory.glob("*.py") if p.is_file())
    if len(files) < HELD_OUT_EVERY:
        raise PriorlabError(f"corpus directory {str(directory)!r} holds {len(files)} .py files; "
                            f"at least {HELD_OUT_EVERY} are needed for a held-out split")
    return files


@dataclass(frozen=True)
class CharCorpus:
    """Training and held-out token streams (int64, 1-D) and where they came from."""

    train: torch.Tensor
    held_out: torch.Tensor
    train_files: tuple[str, ...]
    held_out_files: tuple[str, ...]
    fingerprint: str  # sha256 prefix of the text, to tell corpora of different Pythons apart

    @property
    def vocab_size(self) -> int:
        return len(VOCABULARY)


def load_stdlib_corpus(root: str | Path | None = None) -> CharCorpus:
    """Read the corpus and split it by file (every tenth file held out); deterministic."""
    files = stdlib_files(root)
    parts: dict[bool, list[str]] = {False: [], True: []}
    names: dict[bool, list[str]] = {False: [], True: []}
    digest = hashlib.sha256()
    for position, path in enumerate(files):
        text = path.read_bytes().decode("utf-8", errors="replace")
        held_out = position % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        parts[held_out].append(text)
        names[held_out].append(path.name)
        digest.update(path.name.encode() + b"\0" + text.encode())
    return CharCorpus(train=encode(FILE_SEPARATOR.join(parts[False])),
                      held_out=encode(FILE_SEPARATOR.join(parts[True])),
                      train_files=tuple(names[False]), held_out_files=tuple(names[True]),
                      fingerprint=digest.hexdigest()[:16])


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PriorlabError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_stream(stream) -> None:
    if not torch.is_tensor(stream) or stream.dim() != 1 or stream.dtype != torch.int64:
        what = f"dtype {stream.dtype}, shape {tuple(stream.shape)}" if torch.is_tensor(stream) \
            else type(stream).__name__
        raise PriorlabError(f"stream must be a 1-D int64 tensor of token ids, got {what}")


@dataclass(frozen=True)
class TokenSchedule:
    """Training windows and the order in which a run visits them.

    ``windows[i]`` holds ``seq_len + 1`` consecutive tokens (inputs and shifted targets);
    ``order`` lists window indices, one random permutation per epoch, ``epochs`` times.
    """

    windows: torch.Tensor  # (n_unique_windows, seq_len + 1)
    order: torch.Tensor  # (epochs * n_unique_windows,)
    epochs: int
    start: int  # offset of the unique slice in the stream

    @property
    def unique_tokens(self) -> int:
        return self.windows.shape[0] * (self.windows.shape[1] - 1)

    @property
    def total_tokens(self) -> int:
        return self.order.numel() * (self.windows.shape[1] - 1)

    def num_batches(self, batch_size: int) -> int:
        return self.order.numel() // _positive_int("batch_size", batch_size)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, targets)`` batches of shape ``(batch_size, seq_len)`` in schedule order.

        A last partial batch is dropped, so every step sees the same number of tokens.
        """
        for step in range(self.num_batches(batch_size)):
            chunk = self.windows[self.order[step * batch_size:(step + 1) * batch_size]]
            yield chunk[:, :-1], chunk[:, 1:]


def repeated_token_budget(stream: torch.Tensor, total_tokens: int, repetitions: int, *,
                          seq_len: int, generator: torch.Generator | None = None,
                          start: int | None = None) -> TokenSchedule:
    """A fixed budget of ``total_tokens`` training tokens built from ``total_tokens //
    repetitions`` unique tokens, each seen ``repetitions`` times (arXiv 2305.13230, Sec. 3).

    The unique data is one contiguous slice of ``stream`` (a dataset of that size), cut into
    non-overlapping windows of ``seq_len`` inputs; each epoch visits them in a fresh random order.
    ``start`` fixes the slice's offset (default: drawn from ``generator``); runs that pass the
    same ``start`` but differ in ``repetitions`` train on nested slices (the smaller dataset is
    a prefix of the larger one).
    """
    _check_stream(stream)
    total_tokens = _positive_int("total_tokens", total_tokens)
    repetitions = _positive_int("repetitions", repetitions)
    seq_len = _positive_int("seq_len", seq_len)
    n_windows = total_tokens // repetitions // seq_len
    if n_windows < 1:
        raise PriorlabError(f"total_tokens={total_tokens} over repetitions={repetitions} leaves "
                            f"fewer than seq_len={seq_len} unique tokens; raise total_tokens or "
                            "lower repetitions")
    if total_tokens % (repetitions * seq_len):
        raise PriorlabError(f"total_tokens={total_tokens} is not a multiple of repetitions * "
                            f"seq_len = {repetitions * seq_len}, so the budget would not be "
                            "exactly fixed; round it")
    span = n_windows * seq_len + 1  # the extra token is the last window's final target
    if span > stream.numel():
        raise PriorlabError(f"the stream holds {stream.numel()} tokens, fewer than the "
                            f"{span} unique tokens asked for; lower total_tokens or raise "
                            "repetitions")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if start is None:
        start = int(torch.randint(0, stream.numel() - span + 1, (1,), generator=generator))
    elif not (isinstance(start, int) and 0 <= start <= stream.numel() - span):
        raise PriorlabError(f"start must be an integer in [0, {stream.numel() - span}], "
                            f"got {start!r}")
    windows = stream[start:start + span].unfold(0, seq_len + 1, seq_len)
    order = torch.cat([torch.randperm(n_windows, generator=generator) for _ in range(repetitions)])
    return TokenSchedule(windows=windows.contiguous(), order=order, epochs=repetitions, start=start)


def held_out_windows(stream: torch.Tensor, seq_len: int, max_tokens: int) -> torch.Tensor:
    """A fixed evaluation set: ``(n, seq_len + 1)`` non-overlapping windows spread evenly over
    ``stream`` (so every part of it is sampled), covering at most ``max_tokens`` predictions."""
    _check_stream(stream)
    seq_len = _positive_int("seq_len", seq_len)
    n = min(_positive_int("max_tokens", max_tokens) // seq_len, (stream.numel() - 1) // seq_len)
    if n < 1:
        raise PriorlabError(f"the stream ({stream.numel()} tokens) is too short for one window "
                            f"of {seq_len} tokens, or max_tokens < seq_len; lower seq_len")
    stride = (stream.numel() - 1) // n  # >= seq_len, so windows never overlap
    starts = torch.arange(n) * stride
    return stream[starts[:, None] + torch.arange(seq_len + 1)]


def bits_per_char(nats_per_token: float) -> float:
    """Convert a mean cross-entropy in nats per character to bits per character."""
    return nats_per_token / math.log(2)
