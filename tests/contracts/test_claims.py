"""Every claim is declared completely and matches its registration (the lock beside the results).

A frozen field changed without a new Revision fails here, and so does a Revision whose full tier
has not been rerun: the committed evidence must be the evidence of the declared claim.
"""

import pytest

from priorlab.cli import committed_results
from priorlab.harness.registration import check, read_lock
from priorlab.harness.runner import claim_of, reproduction_cards

CLAIMS = [claim_of(card) for card in reproduction_cards()]


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.method)
def test_every_clause_is_tested_or_listed_as_untested_with_a_reason(claim):
    assert claim.clauses, "list the clauses of the claim's statement (Claim.clauses)"
    named = {x.clause for x in (*claim.comparisons, *claim.guards, *claim.bounds, *claim.untested)}
    left = set(claim.clauses) - named
    assert not left, f"clauses neither tested nor listed untested: {left}"
    assert all(u.reason.strip() for u in claim.untested)
    assert all(c.clause for c in (*claim.comparisons, *claim.bounds)), "every comparison names its clause"


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.method)
def test_budget_is_declared(claim):
    budgets = [claim.budget_of(c) for c in claim.comparisons]
    assert all(b is not None for b in budgets), "declare Claim.budget (or each comparison's budget)"


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.method)
def test_committed_results_match_the_registered_claim(claim):
    results = committed_results()
    if not (results / claim.method / "full").is_dir():
        pytest.skip(f"no committed full tier for {claim.method}")
    lock = read_lock(results, claim)
    assert lock is not None, f"{claim.method} has full results but no claim.lock.json"
    check(claim, lock)  # raises when a frozen field changed without a revision
    current = lock["history"][-1]
    assert current["revision"] == claim.revision, (
        f"claim revision {claim.revision} is not what the committed results ran "
        f"({current['revision']}): rerun `priorlab reproduce {claim.seed_id} --tier full`")
