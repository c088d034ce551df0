"""`expkit runs`: every run folder under a root in one table, sweep jobs included.

Each row comes from meta.json and metrics.json alone (run/jobs.py reads them), so a root
with thousands of runs lists in well under a second; config.yaml is read only for
`--where`, which filters on the resolved config, not only on the overrides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from expkit.config.resolvers import direction
from expkit.errors import ConfigError
from expkit.run.folder import STATUSES, RunDir, read_yaml, strict
from expkit.run.jobs import JobRecord, active_seconds, read_job, run_folders
from expkit.summary import _duration

METRICS = ("val/acc", "best/val/acc", "test/acc")
HEADER = ("folder", "status", "start", "duration", "commit", "overrides", "val/acc", "best", "test/acc")
# With runs of other tasks among them: each run's own main metric (acc, rmse, map, ...).
TASK_HEADER = ("folder", "status", "start", "duration", "commit", "overrides", "task", "metric", "val", "best", "test")


def parse_where(items: list[str]) -> list[tuple[str, list[str]]]:
    """`KEY=VALUE` (VALUE may list choices: `optim=adam,adamw`) -> (key, allowed values)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--where: {item!r} is not of the form KEY=VALUE (e.g. optim=adamw, optim.lr=0.001).")
        out.append((key.strip(), split_choices(value)))
    return out


def split_choices(value: str) -> list[str]:
    """`adam,adamw` -> two choices; a list value (`[32,64]`) stays one."""
    parts, depth, current = [], 0, ""
    for ch in value:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def config_value(config: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key in a plain config. A group (`optim`) stands for its
    choice (`optim.name`, `model.arch`)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    if isinstance(node, dict) and "." not in key:
        from expkit.config.schema import CHOICE_KEY

        choice = CHOICE_KEY.get(key, "name")
        return (choice in node), node.get(choice)
    return True, node


def matches(value: Any, wanted: str) -> bool:
    """A config value against the text of a --where value: numbers by value (1e-3 equals
    0.001), booleans and null by their YAML words, the rest as text."""
    text = wanted.strip()
    if value is None:
        return text.lower() in ("null", "none", "~", "")
    if isinstance(value, bool):
        return text.lower() in (("true", "yes", "on", "1") if value else ("false", "no", "off", "0"))
    if isinstance(value, (int, float)):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    if isinstance(value, list):
        return text.strip("[]").replace(" ", "") == ",".join(str(v) for v in value)
    return str(value) == text


def row(job: JobRecord, root: Path) -> dict[str, Any]:
    """One run as plain data: what `expkit runs --json` prints and expkit.runs() returns."""
    meta, git = job.meta, job.meta.get("git") or {}
    try:
        folder = str(job.path.relative_to(root))
    except ValueError:
        folder = str(job.path)
    metrics = strict(dict(job.metrics))
    started, ended = meta.get("started"), meta.get("ended")
    resumes = [r for r in meta.get("resumes") or [] if isinstance(r, dict)]
    return {
        "folder": folder, "path": str(job.path), "status": job.status or "?", "started": started, "ended": ended,
        # the time it trained: a resumed run's pauses do not count
        "duration_s": active_seconds(meta),
        "commit": git.get("commit"), "dirty": git.get("dirty"), "overrides": job.overrides,
        "resumes": len(resumes), "resume_overrides": [str(o) for o in resumes[-1].get("overrides") or []]
        if resumes else [],
        **{k: metrics.get(k) for k in METRICS}, "metrics": metrics, **task_of(meta),
    }


def task_of(meta: dict[str, Any]) -> dict[str, str]:
    """A run's task and main metric, from meta.json (runs from before tasks: classification)."""
    from expkit.tasks.names import main_metric

    task = meta.get("task") if isinstance(meta.get("task"), dict) else {}
    name = str(task.get("name") or "classification")
    return {"task": name, "main_metric": str(task.get("main") or main_metric(name))}


def _overrides(r: dict[str, Any]) -> str:
    """The first command's overrides, then how often it was resumed and the last resume's
    own (trainer.epochs=20): the config it ends with is the last resume's."""
    text = " ".join(r["overrides"]) or "-"
    if r["resumes"]:
        text += f" [+{r['resumes']} resume{'s' * (r['resumes'] > 1)}"
        text += f": {' '.join(r['resume_overrides'])}]" if r["resume_overrides"] else "]"
    return text


def _textual(value: str) -> bool:
    """A --where value that YAML writes as itself: config.yaml holds it verbatim if it matches."""
    try:
        float(value)
        return False
    except ValueError:
        return bool(value) and value.lower() not in ("null", "none", "~", "true", "false", "yes", "no", "on", "off")


def _read_config(folder: Path, conditions: list[tuple[str, list[str]]]) -> dict[str, Any] | None:
    """The run's resolved config; None when a condition on a text value (optim=adamw) cannot
    hold because the text is nowhere in the file, which spares parsing most files."""
    rundir = RunDir(folder)
    path = rundir.config if rundir.config.is_file() else rundir.hydra_config
    try:
        text = path.read_text()
    except OSError:
        return {}
    for _, values in conditions:
        if all(_textual(v) for v in values) and not any(v in text for v in values):
            return None
    config = read_yaml(path)
    return config if isinstance(config, dict) else {}


def list_runs(root: str | os.PathLike = "runs", status: list[str] | None = None, where: list[str] | None = None,
              sort: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of `expkit runs`: newest first, or best first by `sort` (a metric; losses
    ascending); `limit` keeps the first N."""
    path = Path(root)
    if not path.exists():
        raise ConfigError(f"ROOT {str(root)!r} does not exist.")
    if not path.is_dir():
        raise ConfigError(f"ROOT {str(root)!r} is not a folder.")
    wanted_status = [s for item in status or [] for s in item.split(",")]
    for s in wanted_status:
        if s not in (*STATUSES, "crashed", "?"):
            raise ConfigError(f"--status: value {s!r} is not a run status; choose one of "
                              f"{', '.join((*STATUSES, 'crashed'))}.")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: value {limit} is not allowed; expected an integer >= 1.")
    conditions = parse_where(where or [])
    rows, seen_keys, skipped = [], set(), False
    for folder in run_folders(path):
        job = read_job(folder, config=False)
        if wanted_status and (job.status or "?") not in wanted_status:
            continue
        if conditions:
            config = _read_config(folder, conditions)
            if config is None:
                skipped = True
                continue
            job.config = config
            ok = True
            for key, values in conditions:
                found, value = config_value(job.config, key)
                seen_keys.update([key] if found else [])
                ok = ok and found and any(matches(value, v) for v in values)
            if not ok:
                continue
        rows.append(row(job, path))
    missing = [key for key, _ in conditions if key not in seen_keys]
    if missing and not rows and not skipped:
        raise ConfigError(f"--where: no run under {str(root)!r} has config key {missing[0]!r} "
                          "(keys are dotted paths of config.yaml, e.g. optim.lr).")
    if sort:
        known = sorted({k for r in rows for k in r["metrics"]})
        if known and sort not in known:  # (runs that have no metrics yet sort by any name)
            from expkit.errors import did_you_mean

            hint = did_you_mean(sort, known)
            raise ConfigError(f"--sort: value {sort!r} is not a metric of any run listed"
                              f"{hint + ' Their' if hint else '; their'} metrics: {', '.join(known)}.")
        sign = -1.0 if direction(sort) == "maximize" else 1.0

        def order(r: dict[str, Any]) -> tuple:
            value = r["metrics"].get(sort)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            return (0, sign * value, r["folder"]) if ok else (1, 0.0, r["folder"])

        rows.sort(key=order)
    else:
        rows.sort(key=lambda r: (r["started"] or "", r["folder"]), reverse=True)
    return rows[:limit] if limit else rows


def _commit(r: dict[str, Any]) -> str:
    if not r["commit"]:
        return "-"
    return r["commit"][:7] + ("*" if r["dirty"] else "")


def _metric(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _start(started: str | None) -> str:
    return started[:16].replace("T", " ") if started else "-"


def table(rows: list[dict[str, Any]], sort: str | None = None) -> str:
    """The rows as aligned text columns (a `sort` metric that is not a column of its own
    gets one)."""
    extra = [sort] if sort and sort not in METRICS else []
    mixed = any(r.get("task", "classification") != "classification" for r in rows)
    head = [*(TASK_HEADER if mixed else HEADER), *extra]

    def scores(r: dict[str, Any]) -> list[str]:
        if not mixed:
            return [_metric(r[k]) for k in METRICS]
        main = r["main_metric"]
        return [r["task"], main.removeprefix("val/"), _metric(r["metrics"].get(main)),
                _metric(r["metrics"].get(f"best/{main}")), _metric(r["metrics"].get(main.replace("val/", "test/", 1)))]

    cells = [[r["folder"], r["status"], _start(r["started"]),
              _duration(r["duration_s"]) or "-", _commit(r), _overrides(r),
              *scores(r), *[_metric(r["metrics"].get(k)) for k in extra]] for r in rows]
    return columns(head, cells, right_from=head.index("val" if mixed else "val/acc"))


def columns(head: list[str], cells: list[list[str]], right_from: int | None = None) -> str:
    """Aligned text columns; those from `right_from` on (numbers) aligned right. A value's
    control characters (a received folder's name, say) are printed as escapes."""
    from expkit.printable import cell

    head, cells = [cell(h) for h in head], [[cell(c) for c in row] for row in cells]
    widths = [max(len(c) for c in col) for col in zip(head, *cells, strict=False)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if right_from is not None and i >= right_from else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    return "\n".join([line(head), *(line(c) for c in cells)]) + "\n"
