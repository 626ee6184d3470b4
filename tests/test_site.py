"""The evidence site and the packaged evidence: number formatting, reproducible output, the
installed-copy fallback of ``list``/``info``, and the site driven in headless Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import types
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from priorlab import cli, evidence, registry
from priorlab.errors import PriorlabError
from priorlab.harness.claim import Claim, Comparison, Guard, RunOutput, Untested
from priorlab.harness.report import write_report
from priorlab.harness.runner import claim_of, load_results, reproduction_cards, run_reproductions
from priorlab.harness.site import mean_sd, round_to_resolution, verdict_class

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results"


@pytest.mark.parametrize("x, resolution, text", [
    (0.99771234, 1e-4, "0.9977"),  # an accuracy on 10,000 items has four decimals
    (0.5, 1 / 3000, "0.5000"),
    (1.5707963, 1e-3, "1.571"),
    (0.0012345, 1e-4, "0.0012"),
    (123456.7, 100, "123500"),  # a resolution above one rounds to tens, hundreds, ...
    (-0.0001, 1e-3, "0.000"),  # never "-0.000"
    (1 / 3, None, "0.3333"),  # no resolution: four significant digits
    (0.0, None, "0"),
    (None, 1e-3, "–"),
    (math.nan, None, "–"),
    (math.inf, 1e-3, "–"),
])
def test_round_to_resolution(x, resolution, text):
    assert round_to_resolution(x, resolution) == text


def test_round_to_resolution_signs_and_caps_digits():
    assert round_to_resolution(0.05, 0.01, signed=True) == "+0.05"
    assert round_to_resolution(-0.05, 0.01, signed=True) == "-0.05"
    assert round_to_resolution(0.0, 0.01, signed=True) == "0.00"
    assert round_to_resolution(1234.5678, 1e-9) == "1234.6"  # at most five significant digits


def test_mean_sd_hides_float_noise():
    assert mean_sd(1.5707963, 2.7e-16, 1e-3) == "1.571 ± < 0.001"
    assert mean_sd(0.99771, 0.00028, 1e-4) == "0.9977 ± 0.0003"
    assert mean_sd(0.5, 0.0123) == "0.5000 ± 0.012"  # two significant digits of the sd
    assert mean_sd(0.5, None, 1e-3) == "0.500"


def test_verdict_class():
    assert verdict_class("reproduced") == "reproduced"
    assert verdict_class("not reproduced") == "not reproduced"
    assert verdict_class("inconclusive (under the paper's budget: ours 1, paper 2)") == "inconclusive"
    assert verdict_class("incomplete (3/6 runs)") == "incomplete"
    assert verdict_class("pipeline ok") == "pipeline ok"


@pytest.fixture
def fake():
    """A registered two-arm reproduction in its own family, with one untested clause."""
    module = types.ModuleType("priorlab.reproductions.ptest_site_fake")
    clauses = ("method beats baseline", "it needs no data")
    module.CLAIM = Claim(
        seed_id=0, method="site-fake", statement="Method beats baseline, with `no data`.",
        setting={"smoke": "toy", "full": "toy, longer"}, metric="acc", higher_is_better=True,
        arms=("baseline", "method"),
        comparisons=(Comparison("method", "baseline", "superiority", min_effect=0.05, clause=clauses[0]),),
        guards=(Guard("ece", higher_is_better=False, kind="non-inferiority", margin=0.01),),
        clauses=clauses, untested=(Untested(clauses[1], "nothing to measure"),),
        tiers={"smoke": {"size": 3}, "full": {"size": 10}}, seeds={"smoke": 2, "full": 3},
        curves=("loss",), paper_value="acc 0.9 (Table 1)")

    def run(arm, cfg, seed):
        acc = 0.5 + (0.2 if arm == "method" else 0.0) + 0.01 * seed
        return RunOutput({"acc": acc, "ece": 0.1 - 0.001 * seed},
                         {"loss": {"x": [1, 2, 3], "y": [1.0, 0.5, 0.25 + 0.01 * seed]}},
                         info={"samples_image": [[0.0, 1.0], [acc, 0.5]]}, resolution={"acc": 1e-3})

    module.run = run
    card = registry.MethodCard(
        id="site-fake", name="Site fake", family="Z: site test", kind="function",
        paper=registry.Paper("A fake paper", "A. Author et al.", "Nowhere", 2026, "0000.00000", "",
                             "no official code", 0),
        summary="s", usage="pass", hyperparameters="", deviations="Smaller than the paper's.\n\nAnd `cpu`.",
        claim_scope="", reproduction="ptest_site_fake")
    sys.modules[module.__name__] = module
    registry.register(card)
    yield card
    del registry._CARDS[card.id]
    del sys.modules[module.__name__]


def _loads(results: Path, method: str) -> bool:
    try:
        load_results(registry.get(method), "full", results)
        return True
    except PriorlabError:  # the committed results are being rerun: stale against the code
        return False


@pytest.fixture
def site(fake, tmp_path):
    """A report of the fake's full tier (plus the committed scene-flow results, when current)."""
    results = tmp_path / "results"
    run_reproductions([fake], tier="full", results=results)
    if (COMMITTED / "nsfp" / "full").is_dir() and _loads(COMMITTED, "nsfp"):
        shutil.copytree(COMMITTED / "nsfp", results / "nsfp")
    out = tmp_path / "out"
    _, _, summaries = write_report(results, out, evidence=tmp_path / "evidence.json")
    return types.SimpleNamespace(root=out / "site", results=results, summaries=summaries,
                                 evidence=tmp_path / "evidence.json")


def test_site_pages_and_bytes_reproducible(site, tmp_path):
    root = site.root
    pages = sorted(p.name for p in (root / "papers").glob("*.html"))
    expected = sorted(f"{c.seed_id}-{claim_of(c).method}.html" for c in reproduction_cards())
    assert pages == expected  # one page per registered reproduction, run or not
    page = (root / "papers" / "0-site-fake.html").read_text()
    for needed in ("A fake paper", "acc 0.9 (Table 1)", "nothing to measure", "<code>no data</code>",
                   "Smaller than the paper", "priorlab reproduce 0 --tier full --seed-start 100",
                   "../plots/site-fake_full.png", "../plots/site-fake_full_images.png",
                   "method vs baseline", "0.710 ± 0.010"):
        assert needed in page, needed
    assert (root / "plots" / "site-fake_full.png").is_file()
    assert (root / "plots" / "site-fake_full_images.png").is_file()  # the sample grids per arm
    # the same files give the same bytes
    again = tmp_path / "again"
    write_report(site.results, again)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (again / "site" / path.relative_to(root)).read_bytes(), path


def test_evidence_compact_round_trip(site):
    data = evidence.read_evidence(site.evidence)
    entry = data["methods"]["site-fake"]
    assert entry["status"] == "reproduced" and entry["seeds"] == 3 and entry["untested_clauses"] == 1
    assert entry["effect"] == pytest.approx(0.2) and entry["ci_low"] <= 0.2 <= entry["ci_high"]
    assert "effect +0.2" in evidence.describe(entry)
    assert evidence.compact(evidence.full_summaries(site.results)) == data


def test_read_evidence_rejects_corrupt_file(tmp_path):
    assert evidence.read_evidence(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PriorlabError, match="unreadable"):
        evidence.read_evidence(tmp_path / "bad.json")


def test_committed_evidence_is_current():
    """The packaged evidence.json equals what the committed results give (`priorlab report`)."""
    if not COMMITTED.is_dir():
        pytest.skip("no committed results/ in this checkout")
    assert evidence.EVIDENCE_FILE.is_file(), "run `priorlab report` to write src/priorlab/evidence.json"
    try:
        current = evidence.compact(evidence.full_summaries(COMMITTED))
    except PriorlabError as e:
        pytest.fail(f"the committed results do not load ({e}); rerun them, then `priorlab report`")
    assert evidence.read_evidence() == current, "evidence.json is stale: run `priorlab report`"


def test_installed_copy_lists_packaged_evidence_beside_own_runs(fake, site, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "checkout_results", lambda: None)
    monkeypatch.setattr(evidence, "EVIDENCE_FILE", site.evidence)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # no ./results: only the packaged evidence
    assert cli.main(["list", "site-fake"]) == 0
    out = capsys.readouterr().out
    assert "reproduced" in out and "your runs" not in out and "full report" in out
    assert cli.main(["info", "site-fake"]) == 0
    assert "effect +0.2" in capsys.readouterr().out
    own = work / "results"  # the user's own runs in the working folder: a column of their own
    shutil.copytree(site.results / "site-fake", own / "site-fake")
    for path in (own / "site-fake" / "full").glob("method__seed*.json"):
        path.unlink()
    assert cli.main(["list", "site-fake"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert "your runs (results/)" in header
    assert re.search(r"\breproduced\s+incomplete \(3/6 runs\)$", row), row  # never mixed
    assert cli.main(["list", "--json", "site-fake"]) == 0
    listed = json.loads(capsys.readouterr().out)[0]
    assert listed["status"] == "reproduced" and listed["own_runs"].startswith("incomplete")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip().startswith("priorlab ")


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -c constraints.txt selenium)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no headless browser: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _check_page(browser, url: str) -> list[str]:
    """Load a page; assert its images load and it logs no errors; return its local link targets."""
    browser.get(url)
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert not broken, f"images that did not load on {url}: {broken}"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"console errors on {url}: {errors}"
    hrefs = browser.execute_script("return Array.from(document.links).map(a => a.href)")
    return [h for h in hrefs if h.startswith("file:")]


def test_site_in_browser(site, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium's driver manager: no downloads, no stats
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    browser = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    try:
        index = (site.root / "index.html").as_uri()
        links = _check_page(browser, index)
        rows = browser.find_elements(By.CSS_SELECTOR, "#papers tbody tr")
        listed = {r.find_element(By.CSS_SELECTOR, "a").get_attribute("href").rsplit("/", 1)[1] for r in rows}
        assert listed == {f"{c.seed_id}-{claim_of(c).method}.html" for c in reproduction_cards()}
        assert browser.find_element(By.ID, "filters").is_displayed()  # the script ran
        Select(browser.find_element(By.ID, "filter-family")).select_by_value("Z: site test")
        shown = [r for r in rows if r.is_displayed()]
        assert [r.get_attribute("data-family") for r in shown] == ["Z: site test"]
        Select(browser.find_element(By.ID, "filter-family")).select_by_value("")
        Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("reproduced")
        assert all(r.get_attribute("data-verdict") == "reproduced" for r in rows if r.is_displayed())
        header = browser.find_elements(By.CSS_SELECTOR, "#papers thead th button")[0]
        header.click()  # seed, now descending
        seeds = [int(r.find_element(By.CSS_SELECTOR, "td").text)
                 for r in browser.find_elements(By.CSS_SELECTOR, "#papers tbody tr") if r.is_displayed()]
        assert seeds == sorted(seeds, reverse=True)
        browser.find_elements(By.CSS_SELECTOR, "#papers thead th button")[5].click()  # effect, ascending
        keys = [r.find_elements(By.CSS_SELECTOR, "td")[5].get_attribute("data-sort")
                for r in browser.find_elements(By.CSS_SELECTOR, "#papers tbody tr")]
        numbers = [float(k) for k in keys if k]
        assert numbers and numbers == sorted(numbers)
        assert keys[len(numbers):] == [""] * (len(keys) - len(numbers))  # blanks last
        seen, todo = set(), links
        while todo:
            url = urlparse(todo.pop())
            path = Path(unquote(url.path))
            assert path.is_file(), f"broken link to {path}"
            if path.suffix == ".html" and path not in seen:
                seen.add(path)
                todo += _check_page(browser, path.as_uri())
        assert site.root / "papers" / "0-site-fake.html" in seen
        if (site.results / "nsfp").is_dir():
            assert site.root / "sceneflow.html" in seen
    finally:
        browser.quit()
