"""The README's Lightning, Hugging Face Trainer and Accelerate snippets run as written."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PATTERN = r"```python\n# (Lightning|Hugging Face Trainer|Accelerate).*?```"
SNIPPETS = {m.group(1): m.group(0) for m in re.finditer(PATTERN, README, re.S)}
NEEDS = {"Lightning": "lightning", "Hugging Face Trainer": "transformers", "Accelerate": "accelerate"}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_readme_trainer_snippet_runs(name, tmp_path, monkeypatch):
    assert name in SNIPPETS, f"README lost its {name} snippet"
    pytest.importorskip(NEEDS[name])
    monkeypatch.chdir(tmp_path)  # anything a trainer writes stays out of the checkout
    code = SNIPPETS[name].removeprefix("```python\n").removesuffix("```")
    exec(compile(code, f"<README {name} snippet>", "exec"), {"__name__": "readme"})
