"""One registry of methods, each carrying its paper card.

A card is data: ``priorlab list``, ``priorlab info``, the README table, the report and the
contract tests all read it from here. Cards register themselves when their module is imported;
:func:`load_all` imports every module that registers one.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from priorlab.errors import PriorlabError, UsageError, did_you_mean


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str  # "First Author et al."
    venue: str
    year: int
    arxiv: str
    code_url: str  # "" when no official code exists
    licence: str  # licence of the official code, or "no official code"
    seed_id: int  # position in shared/papers/000_a305717a935cbd33.txt


@dataclass
class Example:
    """A tiny, seeded instance of a method for the contract tests (tests/contracts/).

    The contract runs a few steps of :func:`priorlab.train.fit` on ``model_fn()`` with
    ``loss_fn``, ``optimizer_fn`` and ``adapter_fn`` and checks: finite loss and gradients,
    parameters move, optimiser and adapter ``state_dict`` round-trip (training resumed from a
    round-tripped copy matches training continued in place), ``zero_strength`` (the method at
    strength 0) trains exactly like ``baseline``, and each of ``bad_args`` raises PriorlabError.
    """

    model_fn: Callable[[], Any]  # returns a fresh nn.Module, seeded inside
    batch: tuple  # (inputs, targets) or (inputs, targets, indices)
    loss_fn: Callable[[Any, Any], Any]
    optimizer_fn: Callable[[Any], Any]  # params -> torch optimizer (the method's, or plain SGD)
    adapter_fn: Callable[[], Any] | None = None  # -> Adapter, when the method has one
    # (optimizer_fn, adapter_fn, loss_fn) pairs: the method at zero strength vs the baseline
    zero_strength: tuple | None = None
    baseline: tuple | None = None
    bad_args: tuple[Callable[[], Any], ...] = ()


@dataclass(frozen=True)
class MethodCard:
    """A paper card (see shared/design/PAPER_CARD.md)."""

    id: str  # slug used on the command line
    name: str  # the name people say
    family: str  # catalog family letter and topic, e.g. "T: training dynamics"
    kind: str  # function | module | optimizer | adapter | parametrisation | system
    paper: Paper
    summary: str  # what it is: mechanism in one or two sentences
    usage: str  # a runnable snippet for a plain PyTorch loop (the test suite executes it)
    hyperparameters: str
    deviations: str
    claim_scope: str  # where the paper's claim holds, and what we can test here
    component: Any = None  # the pure component (function/class) a user imports
    adapter: Callable[..., Any] | None = None  # factory for the training-loop adapter, if any
    example: Callable[[], Example] | None = None  # builds a tiny instance for the contract tests
    reproduction: str = ""  # module under priorlab.reproductions, "" if none yet
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def seed_id(self) -> int:
        return self.paper.seed_id


_CARDS: dict[str, MethodCard] = {}

# Modules whose import registers cards (methods, components and systems).
_CARD_PACKAGES = ("priorlab.methods",)


def register(card: MethodCard) -> MethodCard:
    if card.id in _CARDS and _CARDS[card.id] is not card:
        raise PriorlabError(f"method id {card.id!r} is registered twice")
    _CARDS[card.id] = card
    return card


def load_all() -> None:
    """Import every module under the card packages so that all cards are registered."""
    for package_name in _CARD_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__, package_name + "."):
            importlib.import_module(info.name)


def all_cards() -> list[MethodCard]:
    load_all()
    return sorted(_CARDS.values(), key=lambda c: (c.seed_id, c.id))


def get(key: str | int) -> MethodCard:
    """A card by slug or by seed id (``"lion"`` or ``65``); slugs match case-insensitively."""
    cards = all_cards()
    text = str(key).strip()
    folded = text.casefold()
    for card in cards:
        if card.id.casefold() == folded:
            return card
    if text.isdigit():
        matches = [c for c in cards if c.seed_id == int(text)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            ids = ", ".join(c.id for c in matches)
            raise UsageError(f"seed id {text} has several methods ({ids}); name one of them")
    raise did_you_mean(text, [c.id for c in cards], "method")  # suggests case-folded matches


def find(pattern: str | None = None) -> list[MethodCard]:
    """Cards whose id or name matches a shell-style pattern (case-insensitive); all when None."""
    cards = all_cards()
    if not pattern:
        return cards
    pat = pattern.lower()
    if not any(ch in pat for ch in "*?["):
        pat = f"*{pat}*"
    return [c for c in cards
            if fnmatch.fnmatch(c.id.lower(), pat) or fnmatch.fnmatch(c.name.lower(), pat)
            or pat.strip("*") == str(c.seed_id)]
