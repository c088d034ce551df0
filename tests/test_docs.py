"""The docs, executed: every `expkit` command in a fenced block of README.md and docs/*.md
runs as a real process, with the page's own text as the source, and the output a page shows
is compared with what the command prints. A block that cannot run here says why in its
marker; a block with an `expkit` command and no marker fails. The marker convention is in
docs/development.md ("Executed docs")."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import make_git_repo, run_cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# The one place that makes the docs' trainings small: appended to every `expkit train` and
# `expkit lesson` a page runs (later overrides win in Hydra), so a page's 10-epoch example
# takes a second. docs/development.md names them.
SMALL = ["data.sample=128", "trainer.epochs=1", "trainer.progress=off", "trainer.graph=false"]
SMALL_SEARCH = ["hydra.sweeper.n_trials=2"]  # and an Optuna search: two trials

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*(run|output|skip)\b:?(.*?)-->\s*$", re.S)
OPTIONS = {"run": {"exit", "images", "known-failing", "file"}, "output": {"exact", "from", "exit"}, "skip": set()}
# A command line: `expkit ...` or `$ expkit ...`, and torchrun/python -m expkit. `expkit train: ...`
# at the start of a line is expkit's own error message, output rather than a command.
COMMAND = re.compile(r"^(\$ )?expkit(?=\s|$)(?!\s*\w*:\s)|-m expkit\s")
MODULE_FILE = re.compile(r"^# (\w+\.py)\b(.*)$")

# Placeholders a page writes for what only exists once it has run (see docs/development.md).
DATED_RUN = re.compile(r"runs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d")
SWEEP = re.compile(r"runs/multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d")
STEP_FILE = re.compile(r"checkpoints/step-\d+\.pt")
PROJECT = "/home/me/proj"  # a page's project folder, in shown output


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    kind: str | None = None  # run, output, skip or None (no marker)
    options: dict[str, str] = field(default_factory=dict)
    note: str = ""  # a skip's reason; a known-failing's why

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def logical_lines(self) -> list[str]:
        """The block's lines with `\\`-continued ones joined."""
        out, pending = [], ""
        for raw in self.body.splitlines():
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            out.append(pending + raw)
            pending = ""
        return out

    def commands(self) -> list[str]:
        """The `expkit` commands the block shows (a module file's header comment included)."""
        if self.lang == "python":
            first = self.body.splitlines()[0] if self.body else ""
            m = MODULE_FILE.match(first)
            return [m.group(2).strip()] if m and COMMAND.search(m.group(2).strip()) else []
        return [line.strip() for line in self.logical_lines() if COMMAND.search(line.strip())]


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        block = Block(page, text[: m.start()].count("\n") + 1, m.group(1).strip(), m.group(2))
        marker = MARKER.search(before)
        if marker:
            block.kind = marker.group(1)
            if block.kind == "skip":  # a reason in plain words, quotes and all
                block.note = marker.group(2).strip()
                found.append(block)
                continue
            words = shlex.split(marker.group(2))
            block.options = dict(w.split("=", 1) if "=" in w else (w, "") for w in words if "=" in w or w == "exact")
            block.note = " ".join(w for w in words if "=" not in w and w != "exact")
        found.append(block)
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


def test_every_block_with_an_expkit_command_runs_or_says_why_not():
    unmarked = [b.where for b in ALL_BLOCKS if b.commands() and b.kind is None]
    assert not unmarked, ("fenced blocks with an `expkit` command and no marker (<!-- run -->, <!-- output -->, "
                          "or <!-- skip: REASON --> on the line before; docs/development.md):\n" + "\n".join(unmarked))
    silent = [b.where for b in ALL_BLOCKS if b.kind == "skip" and len(b.note) < 10]
    assert not silent, "skip markers without a reason:\n" + "\n".join(silent)


def test_markers_name_only_known_options():
    bad = [f"{b.where}: {sorted(set(b.options) - OPTIONS[b.kind])}" for b in ALL_BLOCKS
           if b.kind and set(b.options) - OPTIONS[b.kind]]
    assert not bad, "unknown marker options:\n" + "\n".join(bad)


class Page:
    """One page's commands, run in order in one project folder (a git repository, as a
    user's project would be), each seeing what the earlier ones made."""

    def __init__(self, page: Path, tmp_path: Path):
        self.page = page
        self.dir = make_git_repo(tmp_path / "proj")
        self.history: list[tuple[str, str]] = []  # (command as the page shows it, its output)
        self.failures: list[str] = []
        self.made_runs: list[Path] = []  # single runs, in the order the page made them
        self.made_sweeps: list[Path] = []

    # Placeholders -------------------------------------------------------------------

    def note_new_folders(self) -> None:
        """Record the run and sweep folders the latest command made, in the order made."""
        runs = self.dir / "runs"
        for meta in sorted(runs.rglob("meta.json")) if runs.exists() else []:
            # A single run is runs/<date>/<time>; sweep and lesson jobs lie deeper.
            if len(meta.parent.relative_to(runs).parts) == 2 and meta.parent not in self.made_runs:
                self.made_runs.append(meta.parent)
        for sweep in sorted(runs.rglob("sweep.json")) if runs.exists() else []:
            if sweep.parent not in self.made_sweeps:
                self.made_sweeps.append(sweep.parent)

    def fill(self, text: str) -> str:
        """The page's placeholders replaced by what its earlier commands made: the k dated run
        paths the page names (in time order) are its last k runs, oldest first; RUN_DIR is the
        newest run; a dated runs/multirun/ path the newest sweep; checkpoints/step-N.pt the
        run's newest numbered checkpoint."""
        page_text = self.page.read_text()
        if SWEEP.search(text):
            sweeps = self.made_sweeps
            assert sweeps, f"{text}: the page has made no sweep yet"
            text = SWEEP.sub(str(sweeps[-1].relative_to(self.dir)), text)
        named = sorted(set(DATED_RUN.findall(SWEEP.sub("", page_text))))
        runs = self.made_runs
        if DATED_RUN.search(text) or "RUN_DIR" in text:
            assert len(runs) >= max(len(named), 1), f"{text}: the page names {len(named)} runs, made {len(runs)}"
            mapping = dict(zip(named, runs[len(runs) - len(named):], strict=True))
            text = DATED_RUN.sub(lambda m: str(mapping[m.group(0)].relative_to(self.dir)), text)
            text = text.replace("RUN_DIR", str(runs[-1].relative_to(self.dir)))
        if STEP_FILE.search(text):
            steps = sorted((runs[-1] / "checkpoints").glob("step-*.pt"))
            text = STEP_FILE.sub(f"checkpoints/{steps[-1].name}", text)
        return text

    # Running ------------------------------------------------------------------------

    def run(self, command: str, block: Block) -> str:
        args = [self.fill(arg) for arg in shlex.split(command.removeprefix("$ "), comments=True)]
        assert args[0] == "expkit", f"{block.where}: only expkit commands run here: {command}"
        out_file = None
        if ">" in args:  # `expkit runs --json > runs.json`
            out_file = args[args.index(">") + 1]
            args = args[: args.index(">")]
        args = args[1:]
        if args[0] in ("train", "lesson") and "--list" not in args and "--help" not in args:
            args += SMALL + (SMALL_SEARCH if "hparams_search=optuna" in args else [])
        proc = run_cli(args, cwd=self.dir, timeout=300)
        output = proc.stdout + proc.stderr
        if out_file:
            (self.dir / out_file).write_text(proc.stdout)
        expected = int(block.options.get("exit", 0))
        failing = block.options.get("known-failing")
        if failing and failing in command:
            if proc.returncode == expected:
                self.failures.append(f"{block.where}: `{command}` passes now: remove known-failing from its marker")
        elif proc.returncode != expected:
            self.failures.append(f"{block.where}: `{command}` exited {proc.returncode}, expected {expected}\n"
                                 f"expkit {shlex.join(args)}\n{output[-3000:]}")
        self.note_new_folders()
        self.history.append((command, output))
        return output

    def make_images(self, names: str) -> None:
        """Images for a block that reads some: NAME.png/.jpg one 8x8 digit-like image; a
        folder NAME/ three per class of the digits' ten (class subfolders, as data=folder reads)."""
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for name in names.split(","):
            target = self.dir / name
            paths = [target] if target.suffix else [target / str(c) / f"{i}.png" for c in range(10) for i in range(3)]
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(path)

    def compare(self, shown: str, actual: str, block: Block) -> None:
        shown = self.fill(shown).replace(PROJECT, str(self.dir))
        if "exact" in block.options:
            if shown.strip("\n") != "\n".join(line.rstrip() for line in actual.strip("\n").splitlines()):
                self.failures.append(f"{block.where}: the page shows\n{shown}\nthe command prints\n{actual}")
            return
        missing = loose_mismatch(shown, actual)
        if missing:
            self.failures.append(f"{block.where}: shown line not printed (in this order):\n  {missing}\n"
                                 f"the command prints:\n{actual}")

    def execute(self) -> None:
        page_blocks = blocks(self.page)
        # Module files first: a page may run a command that uses them before it shows them.
        for block in page_blocks:
            if block.kind == "run" and "file" in block.options:  # a data file the page shows (a CSV table)
                (self.dir / block.options["file"]).write_text(block.body)
                continue
            if block.kind == "run" and block.lang == "python":
                header = MODULE_FILE.match(block.body.splitlines()[0])
                assert header, f"{block.where}: a run python block starts with `# NAME.py`"
                name = header.group(1)
                (self.dir / name).write_text(block.body)
        for block in page_blocks:
            if block.kind == "run":
                if "images" in block.options:
                    self.make_images(block.options["images"])
                for command in block.commands():
                    self.run(command, block)
            elif block.kind == "output":
                self.check_output(block)

    def check_output(self, block: Block) -> None:
        """`$ expkit ...` lines in the block are run and each is followed by its output;
        without them the block is the output of the page's latest command that is the
        marker's from= (its comment left out), or of the latest command."""
        lines = block.body.splitlines()
        if any(line.startswith("$ expkit") for line in lines):
            command, shown = None, []
            for line in [*lines, "$ "]:
                if line.startswith("$ "):
                    if command:
                        self.compare("\n".join(shown), self.run(command, block), block)
                    command, shown = line, []
                else:
                    shown.append(line)
            return
        source = block.options.get("from")
        earlier = [out for cmd, out in self.history if source is None or _bare(cmd) == _bare(source)]
        assert earlier, f"{block.where}: the page runs no {source!r} before this block"
        self.compare(block.body, earlier[-1], block)


def _bare(command: str) -> str:
    return shlex.join(shlex.split(command.removeprefix("$ "), comments=True))


NUMBER = r"[-+]?(?:\d+(?:[.,]\d+)*(?:e[-+]?\d+)?|nan|inf)"
# In a shown token: `...`, a commit or hash (7+ hex digits, a letter among them), a number.
PIECE = re.compile(r"(\.\.\.|(?<![0-9a-z])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,}(?![0-9a-z])"
                   r"|\d+(?:[.,]\d+)*(?:e[-+]?\d+)?)")


def token_pattern(token: str) -> re.Pattern:
    """A shown token as a pattern: its numbers match any number (machine- and data-dependent),
    a commit or hash any hex (or `-` where a run has none), `...` anything; the rest literally."""
    out = []
    for piece in PIECE.split(token):
        if piece == "...":
            out.append(".*")
        elif len(piece) >= 7 and re.fullmatch(r"[0-9a-f]+", piece) and re.search("[a-f]", piece):
            out.append(r"(?:[0-9a-f]+|-)")
        elif piece[:1].isdigit():
            out.append(NUMBER)
        else:
            out.append(re.escape(piece))
    return re.compile("".join(out))


def loose_mismatch(shown: str, actual: str) -> str | None:
    """The first shown line that no printed line matches in order, or None. A shown line
    matches a printed one when its tokens, as token_pattern()s, are a subsequence of the
    printed line's (a printed table may hold more columns or longer overrides)."""
    printed = [line.split() for line in actual.splitlines()]
    at = 0
    for line in shown.splitlines():
        tokens = line.split()
        if not tokens or tokens == ["..."]:
            continue
        patterns = [token_pattern(t) for t in tokens]
        while at < len(printed) and not _subsequence(patterns, printed[at]):
            at += 1
        if at == len(printed):
            return line
        at += 1
    return None


def _subsequence(patterns: list[re.Pattern], tokens: list[str]) -> bool:
    i = 0
    for token in tokens:
        if i < len(patterns) and patterns[i].fullmatch(token):
            i += 1
    return i == len(patterns)


EXECUTED = [p for p in PAGES if any(b.kind in ("run", "output") for b in blocks(p))]


@pytest.mark.parametrize("page", EXECUTED, ids=lambda p: p.name)
def test_page_runs_as_shown(page, tmp_path):
    run = Page(page, tmp_path)
    run.execute()
    assert not run.failures, "\n\n".join(run.failures)


def test_loose_comparison_matches_numbers_and_hashes_but_not_words():
    printed = "folder  status  commit\n2026-12-06/20-34-32  completed  1a2b3c4*  model=mlp data.sample=128  0.3438\n"
    assert loose_mismatch("2026-11-30/13-27-24  completed  795f25f*  model=mlp  0.9666", printed) is None
    assert loose_mismatch("2026-11-30/13-27-24  failed  795f25f*", printed) is not None
    assert loose_mismatch("status  folder", printed) is not None  # order within a line counts
