"""A paper's headline claim, declared as data before anything runs.

A reproduction module (``priorlab.reproductions.pNNN_*``) defines ``CLAIM`` and
``run(arm, cfg, seed) -> RunOutput``. The harness runs arms x seeds, caches each run and
decides the verdict with the one rule in :mod:`priorlab.harness.verdict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from priorlab.errors import PriorlabError

ClaimKind = Literal["superiority", "non-inferiority"]
TIERS = ("smoke", "full")
KINDS = ("superiority", "non-inferiority")


def _check_thresholds(where: str, kind: str, min_effect: float, margin: float) -> None:
    if kind not in KINDS:
        raise PriorlabError(f"{where}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    for name, value in (("min_effect", min_effect), ("margin", margin)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise PriorlabError(f"{where}: {name} must be a finite number >= 0, got {value!r} "
                                "(a negative threshold would let a worse method pass)")


def threshold(rule) -> float:
    """The bar a comparison, guard or bound is judged against: ``min_effect`` for superiority,
    ``margin`` for non-inferiority."""
    return rule.min_effect if rule.kind == "superiority" else rule.margin


@dataclass(frozen=True)
class Budget:
    """How long the paper trains and how long we do, in one unit (epochs, steps, iterations).

    A negative result obtained with ``ours < paper`` is reported as "inconclusive (under the
    paper's budget ...)", never as "not reproduced". When only a lower bound of the paper's
    budget is known, give the bound and say so in ``note``; ``paper=None`` is for papers with no
    training budget to speak of (theory, or runs that end at a reached minimum) — ``note`` says
    why ours is comparable.
    """

    unit: str
    ours: float
    paper: float | None
    note: str = ""

    def __post_init__(self):
        if not self.unit or not (self.ours > 0):
            raise PriorlabError(f"budget needs a unit and a positive 'ours', got {self!r}")
        if self.paper is not None and not self.paper > 0:
            raise PriorlabError(f"budget 'paper' must be positive or None, got {self.paper!r}")

    @property
    def under(self) -> bool:
        return self.paper is not None and self.ours < self.paper

    def describe(self) -> str:
        def number(x: float) -> str:
            return f"{x:,.0f}" if float(x).is_integer() else f"{x:,g}"
        paper = "not reported" if self.paper is None else f"{number(self.paper)} {self.unit}"
        return f"ours {number(self.ours)} {self.unit}, paper {paper}"


@dataclass(frozen=True)
class Comparison:
    """Method arm against baseline arm on the claim's metric.

    superiority: the paired effect (sign-adjusted so that positive is better) is at least
    ``min_effect`` and its confidence interval excludes zero.
    non-inferiority ("matches or beats"): the interval's lower end lies above ``-margin``.

    ``minus=(method2, baseline2)`` turns it into an interaction: the per-seed effect is
    ``(method - baseline) - (method2 - baseline2)`` (e.g. "the gain grows with batch size").
    ``clause`` names the clause of the claim it tests; ``card`` the method card it is evidence
    for (default: the claim's); ``budget`` overrides the claim's budget for this comparison.
    """

    method: str
    baseline: str
    kind: ClaimKind = "superiority"
    min_effect: float = 0.0
    margin: float = 0.0
    clause: str = ""
    card: str = ""
    minus: tuple[str, str] | None = None
    budget: Budget | None = None

    def __post_init__(self):
        _check_thresholds(f"comparison {self.method} vs {self.baseline}", self.kind,
                          self.min_effect, self.margin)

    @property
    def arms(self) -> tuple[str, ...]:
        return (self.method, self.baseline) + (tuple(self.minus) if self.minus else ())

    @property
    def label(self) -> str:
        base = f"{self.method} vs {self.baseline}"
        return f"({base}) - ({self.minus[0]} vs {self.minus[1]})" if self.minus else base


@dataclass(frozen=True)
class Guard:
    """A secondary metric that must also hold for every comparison, by the same rule."""

    metric: str
    higher_is_better: bool
    kind: ClaimKind = "non-inferiority"
    min_effect: float = 0.0
    margin: float = 0.0
    clause: str = ""

    def __post_init__(self):
        _check_thresholds(f"guard on {self.metric}", self.kind, self.min_effect, self.margin)


@dataclass(frozen=True)
class Bound:
    """One arm's metric against a fixed bar the paper states (e.g. "Tr(H) lr / 2 <= 1").

    The per-seed effect is ``sign * (value - bar)`` (sign = +1 when higher is better), judged
    by the same rule as a comparison with ``kind`` and its threshold.
    """

    arm: str
    metric: str
    bar: float
    higher_is_better: bool
    kind: ClaimKind = "superiority"
    min_effect: float = 0.0
    margin: float = 0.0
    clause: str = ""
    card: str = ""

    def __post_init__(self):
        _check_thresholds(f"bound on {self.arm}'s {self.metric}", self.kind, self.min_effect, self.margin)
        if not math.isfinite(self.bar):
            raise PriorlabError(f"bound on {self.arm}'s {self.metric}: bar must be finite, got {self.bar!r}")

    @property
    def label(self) -> str:
        return f"{self.arm} {'>' if self.higher_is_better else '<'} bar {self.bar:g}"


@dataclass(frozen=True)
class Untested:
    """A clause of the paper's claim that no comparison tests here, and why."""

    clause: str
    reason: str


@dataclass(frozen=True)
class Revision:
    """A change to a claim's declaration after it was first registered: its number and why."""

    number: int
    reason: str


@dataclass(frozen=True)
class Claim:
    seed_id: int
    method: str  # registry id of the method card this reproduction belongs to
    statement: str  # the paper's claim, in one sentence
    setting: dict[str, str]  # tier -> what we run, in words (model, data, budget, deviations)
    metric: str
    higher_is_better: bool
    arms: tuple[str, ...]
    comparisons: tuple[Comparison, ...]
    tiers: dict[str, dict]  # tier -> config passed to run(); must have "smoke" and "full"
    seeds: dict[str, int]  # tier -> default number of seeds
    guards: tuple[Guard, ...] = ()
    paper_value: str = ""  # the number the paper reports, for context
    # Revisions after the first declaration, each with its reason (numbers 2, 3, ...). The
    # current revision is part of every run's config hash: bumping it retires cached results.
    revisions: tuple[Revision, ...] = ()
    bounds: tuple[Bound, ...] = ()  # arms' metrics against fixed bars the paper states
    # The clauses of ``statement``: each is named by some comparison's, guard's or bound's
    # ``clause``, or listed in ``untested`` with the reason.
    clauses: tuple[str, ...] = ()
    untested: tuple[Untested, ...] = ()
    budget: Budget | None = None  # the full tier's budget against the paper's
    # metric -> smallest meaningful difference (e.g. 1/n for an accuracy on n items) when the
    # runs do not report it themselves (RunOutput.resolution)
    resolution: dict[str, float] = field(default_factory=dict)
    curves: tuple[str, ...] = ()  # names of the curves worth plotting, in order
    extra_metrics: tuple[str, ...] = field(default_factory=tuple)  # also tabulated in the report
    # tier -> the arms run at that tier, when a tier runs fewer than all (e.g. arms on real data
    # that CI's smoke tier cannot reach); comparisons between arms not run are left out.
    tier_arms: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def revision(self) -> int:
        return max((r.number for r in self.revisions), default=1)

    def arms_for(self, tier: str) -> tuple[str, ...]:
        return self.tier_arms.get(tier, self.arms)

    def comparisons_for(self, tier: str) -> tuple[Comparison, ...]:
        arms = set(self.arms_for(tier))
        return tuple(c for c in self.comparisons if set(c.arms) <= arms)

    def budget_of(self, comparison: Comparison) -> Budget | None:
        return comparison.budget or self.budget

    def __post_init__(self):
        numbers = [r.number for r in self.revisions]
        if numbers != list(range(2, 2 + len(numbers))) or any(not r.reason.strip() for r in self.revisions):
            raise PriorlabError(f"claim of paper {self.seed_id}: revisions must be numbered 2, 3, ... "
                                f"in order, each with a reason; got {numbers}")
        named = {c.clause for c in (*self.comparisons, *self.guards, *self.bounds)}
        named |= {u.clause for u in self.untested}
        stray = named - set(self.clauses) - {""}
        if stray:
            raise PriorlabError(f"claim of paper {self.seed_id} names clause(s) {sorted(stray)} that "
                                f"are not in clauses={list(self.clauses)}")
        used = {a for c in self.comparisons for a in c.arms} | {b.arm for b in self.bounds}
        missing = used - set(self.arms)
        if missing:
            raise PriorlabError(
                f"claim of paper {self.seed_id} compares arm(s) {sorted(missing)} that it does not "
                f"declare; add them to arms={list(self.arms)} or fix the comparison")
        if not self.comparisons:
            raise PriorlabError(f"claim of paper {self.seed_id} declares no comparison")
        for tier in TIERS:
            if tier not in self.tiers or tier not in self.seeds:
                raise PriorlabError(f"claim of paper {self.seed_id} lacks the {tier!r} tier")
            unknown = set(self.arms_for(tier)) - set(self.arms)
            if unknown:
                raise PriorlabError(f"claim of paper {self.seed_id} runs undeclared arm(s) "
                                    f"{sorted(unknown)} at the {tier!r} tier")
            if not self.comparisons_for(tier):
                raise PriorlabError(f"claim of paper {self.seed_id} has no comparison whose arms "
                                    f"both run at the {tier!r} tier")


@dataclass
class RunOutput:
    """What one run returns: scalar metrics, and curves for the plots.

    ``curves`` maps a name to ``{"x": [...], "y": [...]}`` (x is steps or epochs).
    """

    metrics: dict[str, float]
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # anything worth keeping (e.g. the selected lr)
    # metric -> smallest meaningful difference in this run (1/n for an accuracy on n items)
    resolution: dict[str, float] = field(default_factory=dict)
    # hyperparameter name -> {"grid": [...], "selected": value} for arms tuned over a grid; a
    # selection on the grid's edge makes the comparisons that use this arm inconclusive
    tuning: dict[str, dict] = field(default_factory=dict)
