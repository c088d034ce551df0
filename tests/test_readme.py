"""The README is the front door: its quick start stays first, its links resolve, and the
key reference it links to is generated from what Hydra composes."""

import re
from pathlib import Path

from expkit.config.reference import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_comes_first():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make train" in quick and "make test" in quick
    assert README.index("## Quick start") < README.index("## Commands")


def test_readme_is_a_front_page():
    assert len(README.encode()) < 16_000, "README.md grew past a front page: move reference text to docs/"


def test_key_reference_is_generated_from_what_hydra_composes():
    page = (ROOT / "docs" / "reference.md").read_text()
    stale = "docs/reference.md is stale: python -m expkit.config.reference > docs/reference.md"
    assert page == reference_markdown(), stale


def test_relative_links_resolve():
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "bench" / "README.md"]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)
