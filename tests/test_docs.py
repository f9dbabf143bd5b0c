"""The documentation says what is true now: tables equal the committed JSON, links resolve, the
README stays short, and no page narrates the project's history."""

from __future__ import annotations

import re

import pytest

from scripts import tables
from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_results_table_equals_the_committed_metrics():
    text = (ROOT / "README.md").read_text()
    assert "<!-- table: results -->" in text and "<!-- table: recall_by_area -->" in text
    _, changed = tables.render(text, "README.md")
    assert changed == [], "run: python scripts/tables.py"
    # and it is the metrics' F1 that the README shows, not a stale copy
    for model in tables.MODELS:
        f1 = tables.load(f"metrics/{model}.json")["f1"]
        assert f"**{f1:.3f}**" in text


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_generated_table_is_current(path):
    _, changed = tables.render(path.read_text(), path.name)
    assert changed == [], "run: python scripts/tables.py"


def test_a_changed_metric_makes_the_check_fail(monkeypatch):
    text = (ROOT / "README.md").read_text()
    real = tables.load

    def shifted(rel):
        data = real(rel)
        if rel == "metrics/custom.json":
            data = {**data, "f1": data["f1"] - 0.1}
        return data

    monkeypatch.setattr(tables, "load", shifted)
    new, changed = tables.render(text, "README.md")
    assert changed == ["README.md: table results"]
    assert new != text


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:40])
    assert "bash scripts/run.sh repro" in first_screen
    assert "bash scripts/run.sh test" in first_screen


LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s#]+)")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(path):
    missing = [
        target for target in LINK.findall(path.read_text()) if not (path.parent / target).exists()
    ]
    assert missing == []


HISTORY = re.compile(
    r"issue \d+|issues? #?\d+|before issue|earlier (version|run|sample)|older (figures|version)"
    r"|previous version|what this pipeline did|not re-measured",
    re.I,
)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_page_narrates_the_projects_history(path):
    hits = [line for line in path.read_text().splitlines() if HISTORY.search(line)]
    assert hits == []
