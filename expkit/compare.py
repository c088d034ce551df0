"""`expkit compare RUN_A RUN_B [RUN ...]`: only what differs between runs.

    config   the keys of config.yaml whose values differ, with each run's value
    metrics  the final and best metrics side by side
    code     each run's commit; the files changed between the commits (git diff
             --name-status, in the repository that holds the current folder or the
             runs'), each run's uncommitted changes (git.diff) and untracked files
             (untracked.json), and whether the code differs at all
    data     each run's data fingerprint (meta.json `data`)
    --plot   val/acc and train/loss of every run in one PNG, from their event files
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expkit.config.compose import flatten
from expkit.errors import ConfigError
from expkit.printable import cell
from expkit.run.folder import RunDir, strict
from expkit.run.jobs import JobRecord, read_job, read_scalars
from expkit.run.provenance import diff_files, has_commit, repo_root, run_git, tracked_diff
from expkit.runlist import columns, task_of

METRICS = ("val/acc", "best/val/acc", "val/loss", "train/acc", "train/loss", "test/acc", "test/loss",
           "epoch", "step")
CURVES = ("val/acc", "train/loss")


@dataclass
class Comparison:
    runs: list[JobRecord]
    labels: list[str]
    config: dict[str, list[Any]] = field(default_factory=dict)  # key -> each run's value (differing keys only)
    metrics: dict[str, list[Any]] = field(default_factory=dict)  # metric -> each run's value
    commits: list[str | None] = field(default_factory=list)
    dirty: list[bool] = field(default_factory=list)
    changed_between: dict[str, list[str]] = field(default_factory=dict)  # "A..B" -> ["M\tfile", ...]
    notes: list[str] = field(default_factory=list)  # what could not be compared, and why
    uncommitted: list[list[str]] = field(default_factory=list)  # per run: files its git.diff changes
    untracked: list[dict[str, str]] = field(default_factory=list)  # per run: path -> sha256
    code_differs: bool = False
    data: list[dict[str, Any]] = field(default_factory=list)
    data_differs: bool | None = None  # None: a run has no fingerprint

    def as_dict(self) -> dict[str, Any]:
        return {"runs": [str(r.path) for r in self.runs], "config": self.config, "metrics": self.metrics,
                "code": {"commits": self.commits, "dirty": self.dirty, "changed_between": self.changed_between,
                         "uncommitted": self.uncommitted, "untracked": self.untracked,
                         "differs": self.code_differs, "notes": self.notes},
                "data": {"runs": self.data, "differs": self.data_differs}}


def load_run(path: str | os.PathLike) -> JobRecord:
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"RUN {str(path)!r} is not a folder." if folder.exists()
                          else f"RUN {str(path)!r} does not exist.")
    rundir = RunDir(folder)
    if not rundir.is_run():
        raise ConfigError(f"{str(path)!r} is not an expkit run folder (it has no {rundir.meta_path.name}).")
    return read_job(folder)


MISSING = "(absent)"


def compare(paths: list[str | os.PathLike]) -> Comparison:
    if len(paths) < 2:
        raise ConfigError("compare needs at least two run folders.")
    runs = [load_run(p) for p in paths]
    labels = [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(len(runs))]
    c = Comparison(runs=runs, labels=labels)
    flat = [flatten(r.config) for r in runs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    for key in keys:
        values = [f.get(key, MISSING) for f in flat]
        if any(v != values[0] for v in values[1:]):
            c.config[key] = values
    metric_keys = [k for k in METRICS if any(k in r.metrics for r in runs)]
    metric_keys += sorted({k for r in runs for k in r.metrics if k not in metric_keys})
    c.metrics = {k: strict([r.metrics.get(k) for r in runs]) for k in metric_keys}
    _compare_code(c)
    c.data = [dict(r.meta.get("data") or {}) for r in runs]
    prints = [d.get("sha256") for d in c.data]
    c.data_differs = None if None in prints else len(set(prints)) > 1
    return c


def _compare_code(c: Comparison) -> None:
    gits = [r.meta.get("git") or {} for r in c.runs]
    c.commits = [g.get("commit") for g in gits]
    c.dirty = [bool(g.get("dirty")) for g in gits]
    diffs = [RunDir(r.path).read_git_diff() for r in c.runs]
    c.uncommitted = [diff_files(d) for d in diffs]
    c.untracked = [{f["path"]: f["sha256"] for f in RunDir(r.path).read_untracked()} for r in c.runs]
    differs = (len(set(c.commits)) > 1 or len({tracked_diff(d) for d in diffs}) > 1
               or any(u != c.untracked[0] for u in c.untracked[1:]))
    c.code_differs = differs
    if None in c.commits:
        c.notes.append("a run recorded no git commit (it did not run inside a git repository)")
        return
    if len(set(c.commits)) == 1:
        return
    repo = repo_root(os.getcwd())
    candidates = [repo] if repo else []
    candidates += [g.get("repo") for g in gits if g.get("repo") and Path(g["repo"]).is_dir()]
    repo = next((r for r in candidates if all(has_commit(r, commit) for commit in set(c.commits))), None)
    if repo is None:
        c.notes.append("the commits are not all in " + (" or ".join(dict.fromkeys(str(x) for x in candidates))
                                                          or "a git repository here")
                       + "; files changed between them unknown")
        return
    first = c.commits[0]
    for label, commit in zip(c.labels[1:], c.commits[1:], strict=True):
        if commit == first:
            continue
        proc = run_git(repo, "diff", "--name-status", first, commit)
        c.changed_between[f"{c.labels[0]}..{label}"] = proc.stdout.split("\n")[:-1] if proc.stdout else []


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e5 else f"{value:.4g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _plain(value: Any) -> str:
    """A config value as YAML writes it (every digit kept)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def report(c: Comparison) -> str:
    lines = ["runs:"] + [f"  {label}  {cell(run.path)}" for label, run in zip(c.labels, c.runs, strict=True)]
    lines += ["", "config (keys that differ):"]
    if c.config:
        lines += _indent(columns(["key", *c.labels], [[k, *[_plain(v) for v in vs]] for k, vs in c.config.items()]))
    else:
        lines.append("  none: the resolved configs are equal")
    lines += ["", "metrics (final; best/val/acc is the best evaluation):"]
    lines += _indent(columns(["metric", *c.labels], [[k, *[_show(v) if v is not None else "-" for v in vs]]
                                                     for k, vs in c.metrics.items()], right_from=1))
    lines += ["", "code: " + ("differs" if c.code_differs else "the same (commit, uncommitted diff, untracked files)")]
    for label, commit, dirty, files, untracked in zip(c.labels, c.commits, c.dirty, c.uncommitted, c.untracked,
                                                      strict=True):
        what = cell(", ".join(files)) or "none"
        extra = f"; untracked: {cell(', '.join(untracked))}" if untracked else ""
        lines.append(f"  {label}  commit {cell(str(commit)[:12]) if commit else '-'}{' (dirty)' if dirty else ''}; "
                     f"uncommitted changes: {what}{extra}")
    for pair, changed in c.changed_between.items():
        lines.append(f"  files changed between the commits {pair}: {len(changed)}")
        lines += [f"    {line}" for line in changed[:50]]
        if len(changed) > 50:
            lines.append(f"    ... {len(changed) - 50} more")
    lines += [f"  note: {n}" for n in c.notes]
    verdict = ("not recorded for every run" if c.data_differs is None
               else "differs" if c.data_differs else "the same examples")
    lines += ["", f"data: {verdict}"]
    for label, d in zip(c.labels, c.data, strict=True):
        sizes = ", ".join(f"{k} {v}" for k, v in (d.get("sizes") or {}).items())
        lines.append(f"  {label}  {cell(d.get('name', '-'))} ({cell(sizes) or 'sizes -'}) "
                     f"sha256 {cell(str(d.get('sha256') or '-')[:16])}  from {cell(d.get('source', '-'))}")
    return "\n".join(lines) + "\n"


def _indent(text: str) -> list[str]:
    return ["  " + line for line in text.rstrip("\n").split("\n")]


def curves(run_dir: Path, tags: tuple[str, ...] = CURVES) -> dict[str, list[tuple[int, float]]]:
    """The scalar curves `tags` of a run (a resumed run's repeated steps once, the last)."""
    return {tag: points for tag, points in read_scalars(Path(run_dir)).items() if tag in tags}


def plot(c: Comparison, out: str | os.PathLike) -> Path:
    """Each run's main metric (val/acc; val/rmse for regression, ...) and train/loss, one
    panel each, in one PNG."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot: {str(out)!r} must end in .png.")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot: folder {str(path.parent)!r} does not exist.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = (*dict.fromkeys(task_of(r.meta)["main_metric"] for r in c.runs), "train/loss")
    data = [curves(r.path, tags) for r in c.runs]
    fig, axes = plt.subplots(1, len(tags), figsize=(6 * len(tags), 4))
    for ax, tag in zip(axes, tags, strict=True):
        for label, run, found in zip(c.labels, c.runs, data, strict=True):
            points = found.get(tag, [])
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], marker="o" if len(points) < 20 else None,
                        label=f"{label}: {run.path.name}")
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no events", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
