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
    assert len(README.encode()) < 15 * 1024, "README.md grew past a front page: move reference text to docs/"


def test_key_reference_is_generated_from_what_hydra_composes():
    page = (ROOT / "docs" / "reference.md").read_text()
    stale = "docs/reference.md is stale: run `make reference` to regenerate it from the config dataclasses"
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


def test_command_table_shows_every_option_of_every_command():
    """Each command's rows of the README's command table name every option its argparse
    parser defines, read from the parsers themselves, so a new flag cannot go unlisted."""
    from expkit.cli import build_parser

    table = README.split("## Commands", 1)[1].split("\nExit status:", 1)[0]
    _, commands = build_parser()
    missing = []
    for name, parser in commands.items():
        rows = [row for row in table.splitlines() if row.startswith(f"| `expkit {name}")]
        assert rows, f"README's command table has no row for expkit {name}"
        for action in parser._actions:
            options = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
            if options and not any(o in row for o in options for row in rows):
                missing.append(f"expkit {name} {options[0]}")
    assert not missing, "options missing from README's command table: " + ", ".join(missing)


def group_table_choices(page: str) -> dict[str, set[str]]:
    """group -> the choices a page's group table names (| `group` | `a` (default), `b` ...)."""
    found = {}
    for row in re.findall(r"^\| `(\w+)` \| ([^|]+)\|", page, flags=re.M):
        found[row[0]] = set(re.findall(r"`(\w+)`", row[1]))
    return found


def test_group_tables_name_every_choice():
    """README's and docs/config.md's group tables list every group and every choice that
    conf/ holds, read from the folders themselves, so a new choice cannot go unlisted."""
    from expkit.config.groups import list_choices

    for name, page in [("README.md", README), ("docs/config.md", (ROOT / "docs" / "config.md").read_text())]:
        table = group_table_choices(page)
        missing = [f"{group}={choice}" for group, choices in list_choices().items()
                   for choice in choices if choice not in table.get(group, set())]
        assert not missing, f"{name}'s group table leaves out " + ", ".join(missing)
