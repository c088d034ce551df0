"""The README is the front door: its quick start and key reference stay true."""

from pathlib import Path

from expkit.docs import reference_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_quick_start_comes_first():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make train" in quick and "make test" in quick
    assert README.index("## Quick start") < README.index("## Commands")


def test_key_reference_is_generated_from_the_schema():
    assert reference_markdown() in README, "README key table is stale: paste `python -m expkit.docs` into it"
