"""The course's lessons: every conf/experiment/ preset runs as a sweep in sample mode through
the real CLI (`expkit train -m experiment=NAME +debug=fast ...`), and `expkit report` turns
the sweep into a PNG and a markdown table with one row per job; the verdicts come from the
numbers (a sweep that contradicts the claim is reported as such)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_cli

from expkit.config.groups import list_choices

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Sample mode (256 examples), two epochs, and a smaller model where the preset allows it.
SMALL = ["+debug=fast", "trainer.epochs=2", "trainer.progress=off"]
PRESETS = {
    # name: (extra overrides, number of jobs, a varied override that names each job)
    "dropout": (["model.width=64"], 2, "reg.dropout"),
    "batchnorm": (["model.depth=2", "model.width=64"], 2, "reg.batchnorm"),
    "init_depth": (["model.depth=4", "model.width=32"], 4, "init"),
    "schedulers": (["model.width=64"], 6, "schedulers"),
    "optimizers": (["model.width=64"], 4, "optimizers"),
    "skip": (["model.blocks=1", "model.width=8"], 4, "model.skip"),
}


def sweep_dir(root: Path) -> Path:
    found = sorted(p for p in (root / "runs" / "multirun").glob("*/*") if p.is_dir())
    assert len(found) == 1, found
    return found[0]


def jobs_of(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/meta.json"))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def table_rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) >= 2 and set(lines[1].replace("|", "")) == {"-"}, md
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in [lines[0], *lines[2:]]]


def report(args: list[str], capsys) -> str:
    """`expkit report ARGS` in this process (its CLI wiring and errors are tested through the real
    CLI below; here the sweeps are what matter, and a second interpreter per preset costs ~3 s)."""
    from expkit.cli import main

    assert main(["report", *args]) == 0
    return capsys.readouterr().out


def test_every_preset_is_tested():
    assert set(list_choices()["experiment"]) == set(PRESETS)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_sweeps_and_reports(tmp_path, name, capsys):
    extra, n_jobs, varied = PRESETS[name]
    run_cli(["train", "-m", f"experiment={name}", *SMALL, *extra], cwd=tmp_path, check=True)
    sweep = sweep_dir(tmp_path)
    jobs = jobs_of(sweep)
    assert len(jobs) == n_jobs
    out = report([str(sweep)], capsys)
    png, md = sweep / f"{name}.png", sweep / f"{name}.md"
    assert f"wrote {png}" in out
    width, height = png_size(png)
    assert width >= 800 and height >= 300 and png.stat().st_size > 20_000
    text = md.read_text()
    assert f"# Lesson: {name}" in text and "**The course claims:**" in text
    assert re.search(r"\*\*Verdict: (reproduced|partly reproduced|not reproduced|not testable)\.\*\*", text)
    assert f"![{name}]({name}.png)" in text
    head, *rows = table_rows(text)
    assert len(rows) == n_jobs
    assert varied in head and "val acc" in head and "train − val acc" in head
    assert len({r[head.index(varied)] for r in rows}) == n_jobs or name in ("init_depth", "skip")
    assert sorted(int(r[0]) for r in rows) == list(range(n_jobs))
    assert all(r[head.index("status")] == "completed" for r in rows)


def test_command_line_override_beats_the_presets_sweep(tmp_path, capsys):
    """`reg.dropout=0.3` on the command line replaces the preset's hydra.sweeper.params."""
    run_cli(["train", "-m", "experiment=dropout", "reg.dropout=0.3", "model.width=16", *SMALL],
            cwd=tmp_path, check=True)
    sweep = sweep_dir(tmp_path)
    [job] = jobs_of(sweep)
    assert "dropout: 0.3" in (job / "config.yaml").read_text()
    out = tmp_path / "out"
    report([str(sweep), "--out", str(out)], capsys)
    assert "Every job used the same dropout" in (out / "dropout.md").read_text()
    png_size(out / "dropout.png")


def test_a_sweep_that_is_no_lesson_gets_the_generic_report(tmp_path):
    run_cli(["train", "-m", "model=mlp", "model.width=16", "optim.lr=1e-3,3e-3", *SMALL], cwd=tmp_path,
            check=True)
    sweep = sweep_dir(tmp_path)
    run_cli(["report", str(sweep)], cwd=tmp_path, check=True)
    text = (sweep / "report.md").read_text()
    assert "The course claims" not in text
    head, *rows = table_rows(text)
    assert "optim.lr" in head and len(rows) == 2
    png_size(sweep / "report.png")


def test_bad_input_is_one_line(tmp_path):
    for args in (["report", str(tmp_path / "nope")], ["report", str(tmp_path)],
                 ["report", str(tmp_path), "--lesson", "karate"]):
        if args[-1] == "karate":
            (tmp_path / "0_x").mkdir()
            (tmp_path / "0_x" / "meta.json").write_text("{}")
        proc = run_cli(args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("expkit report: ")
    assert run_cli(["report"], cwd=tmp_path).returncode == 2


# ---------------------------------------------------------------- verdicts follow the numbers
def fake_job(num: int, config: dict, curves: dict[str, list[float]], spe: int = 10):
    """A job whose tags hold one value per epoch (train/* and opt/lr at the epoch's last step)."""
    from expkit.lessons.jobs import Job

    epochs = max(len(v) for v in curves.values())
    scalars = {tag: [((i + 1) * spe, v) for i, v in enumerate(values)] for tag, values in curves.items()}
    return Job(path=Path(f"{num}_x"), num=num, overrides=[f"{k}={v}" for k, v in _flat(config).items()],
               status="completed", config=config, metrics={"epoch": epochs, "step": epochs * spe}, choices={},
               command=[], val_size=360, scalars=scalars, label=str(num))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_dropout_verdict_is_computed_not_written_down():
    from expkit.lessons.claims import check_dropout

    def pair(gap_without: float, gap_with: float):
        return [fake_job(0, {"reg": {"dropout": 0.0}}, {"train/acc": [1.0], "val/acc": [1.0 - gap_without],
                                                        "train/loss": [0.01], "val/loss": [0.01 + gap_without]}),
                fake_job(1, {"reg": {"dropout": 0.5}}, {"train/acc": [1.0], "val/acc": [1.0 - gap_with],
                                                        "train/loss": [0.01], "val/loss": [0.01 + gap_with]})]

    assert check_dropout(pair(0.05, 0.01)).verdict == "reproduced"
    found = check_dropout(pair(0.01, 0.05))
    assert found.verdict == "not reproduced" and any("did not shrink" in ln for ln in found.lines)


def test_init_depth_verdict_says_when_xavier_learns_too():
    from expkit.lessons.claims import check_init_depth

    def job(num, act, init, accs):
        grads = {f"grad/norm/{i}.weight": [1.0] for i in range(1, 8, 2)}
        return fake_job(num, {"model": {"activation": act, "depth": 4}, "init": {"name": init}},
                        {"val/acc": accs, "train/loss": [2.0, 0.1], **grads})

    learned = [job(0, "relu", "kaiming_normal", [0.5, 0.95]), job(1, "relu", "xavier_normal", [0.4, 0.93])]
    found = check_init_depth(learned)
    assert found.verdict == "not reproduced"
    assert any("Xavier learns" in ln and "not what the course says" in ln for ln in found.lines)
    stalled = [learned[0], job(1, "relu", "xavier_normal", [0.1, 0.11])]
    assert check_init_depth(stalled).verdict == "reproduced"


def test_skip_verdict_separates_the_effect_from_the_explanation():
    """A plain net that trains worse while its gradients do not fade: the effect is reproduced,
    the course's explanation is not, and the report says so."""
    from expkit.lessons.claims import check_skip

    def job(num, skip, first_grad, loss):
        grads = {"grad/norm/0.weight": [first_grad], "grad/norm/9.weight": [1.0]}
        return fake_job(num, {"model": {"skip": skip, "stages": 1, "blocks": 4}, "reg": {"batchnorm": True}},
                        {"val/acc": [0.5, 0.9 if skip else 0.4], "train/loss": [2.0, loss], **grads})

    found = check_skip([job(0, True, 1.0, 0.05), job(1, False, 50.0, 1.2)])
    assert found.verdict == "partly reproduced"
    assert any("do not fade" in ln and "does not hold" in ln for ln in found.lines)
    assert check_skip([job(0, True, 1.0, 0.05), job(1, False, 1e-9, 2.3)]).verdict == "reproduced"
