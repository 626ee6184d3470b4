"""A paper's headline claim, declared as data before anything runs.

A reproduction module (``priorlab.reproductions.pNNN_*``) defines ``CLAIM`` and
``run(arm, cfg, seed) -> RunOutput``. The harness runs arms x seeds, caches each run and
decides the verdict with the one rule in :mod:`priorlab.harness.verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from priorlab.errors import PriorlabError

ClaimKind = Literal["superiority", "non-inferiority"]
TIERS = ("smoke", "full")


@dataclass(frozen=True)
class Comparison:
    """Method arm against baseline arm on the claim's metric.

    superiority: the paired effect (sign-adjusted so that positive is better) is at least
    ``min_effect`` and its confidence interval excludes zero.
    non-inferiority ("matches or beats"): the interval's lower end lies above ``-margin``.
    """

    method: str
    baseline: str
    kind: ClaimKind = "superiority"
    min_effect: float = 0.0
    margin: float = 0.0


@dataclass(frozen=True)
class Guard:
    """A secondary metric that must also hold for every comparison, by the same rule."""

    metric: str
    higher_is_better: bool
    kind: ClaimKind = "non-inferiority"
    min_effect: float = 0.0
    margin: float = 0.0


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
    revision: int = 1  # bump when run() changes meaning: cached results then no longer match
    curves: tuple[str, ...] = ()  # names of the curves worth plotting, in order
    extra_metrics: tuple[str, ...] = field(default_factory=tuple)  # also tabulated in the report
    # tier -> the arms run at that tier, when a tier runs fewer than all (e.g. arms on real data
    # that CI's smoke tier cannot reach); comparisons between arms not run are left out.
    tier_arms: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def arms_for(self, tier: str) -> tuple[str, ...]:
        return self.tier_arms.get(tier, self.arms)

    def comparisons_for(self, tier: str) -> tuple[Comparison, ...]:
        arms = set(self.arms_for(tier))
        return tuple(c for c in self.comparisons if {c.method, c.baseline} <= arms)

    def __post_init__(self):
        missing = {a for c in self.comparisons for a in (c.method, c.baseline)} - set(self.arms)
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
