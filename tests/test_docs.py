"""The manual stays true to the code: every built-in device and model is listed where users look,
and the README's front page stays short and links only to pages that exist.

The docs build itself (`mkdocs build --strict`: broken links, anchors, API pages) runs in
`.ci/run` after the tests.
"""

from __future__ import annotations

import re
from pathlib import Path

from testbed.catalog import DEVICES, MODELS

ROOT = Path(__file__).resolve().parents[1]


def test_every_built_in_device_and_model_is_listed_in_the_manual() -> None:
    page = (ROOT / "docs" / "concepts" / "scenarios.md").read_text()
    for name in [*DEVICES, *MODELS]:
        assert f"| `{name}` |" in page, f"{name} is in testbed/catalog.py but not in docs/concepts/scenarios.md"


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)
    assert links, "the README links into the manual"
    for link in links:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_the_readme_commands_are_the_ones_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[dev]' && pytest -q"
    assert test_command in readme and test_command in ci
    assert "testbed run faults/baseline.yaml --out out/baseline" in readme
    assert "mkdocs build --strict" in ci
