"""The course's lessons: every conf/experiment/ preset runs as a sweep in sample mode through
the real CLI (`expkit train -m experiment=NAME +debug=fast seed=0 ...`: one seed per arm), and
`expkit report` turns the sweep into a PNG and markdown tables; the verdicts come from the
numbers by the rule of lessons/stats.py (checked here on constructed numbers), and one tiny
`expkit lesson` runs two seeds end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_cli

from expkit.config.groups import list_choices

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Sample mode (256 examples), two epochs, and a smaller model where the preset allows it.
SMALL = ["+debug=fast", "trainer.epochs=2", "trainer.progress=off", "seed=0"]
PRESETS = {
    # name: (extra overrides, number of jobs, a varied override that names each job)
    "dropout": (["model.width=64"], 2, "reg.dropout"),
    "batchnorm": (["model.depth=2", "model.width=64"], 2, "reg.batchnorm"),
    "init_depth": (["model.depth=4", "model.width=32"], 4, "init"),
    "schedulers": (["model.width=64"], 6, "schedulers"),
    "optimizers": (["model.width=64"], 5, "optimizers"),
    "skip": (["model.blocks=1", "model.width=8"], 4, "model.skip"),
    "grad_clip": (["model.depth=3", "model.width=32"], 4, "reg.grad_clip"),
}
VERDICT = re.compile(r"\*\*Verdict: (reproduced|not reproduced|inconclusive)\.\*\*")


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
    """The rows of the last table in `md` (a report's table of every job)."""
    tables: list[list[str]] = []
    previous = ""
    for ln in md.splitlines():
        if ln.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(ln)
        previous = ln
    lines = tables[-1] if tables else []
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
    assert VERDICT.search(text) and "Verdict rule: each comparison is a two-sided Welch t-test" in text
    assert VERDICT.search(text).group(1) == "inconclusive" and "needs at least 2 seeds per arm" in text
    assert f"![{name}]({name}.png)" in text
    head, *rows = table_rows(text)
    assert len(rows) == n_jobs
    assert varied in head and "val acc" in head and "train − val acc" in head
    assert len({r[head.index(varied)] for r in rows}) == n_jobs or name in ("init_depth", "skip", "grad_clip")
    assert sorted(int(r[0]) for r in rows) == list(range(n_jobs))
    # grad_clip's unclipped high-LR arm may blow up on purpose (status failed)
    assert all(r[head.index("status")] == "completed" for r in rows) or name == "grad_clip"


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
def fake_job(num: int, config: dict, curves: dict[str, list[float]], spe: int = 10, arm: str = "",
             status: str = "completed"):
    """A job whose tags hold one value per epoch (train/* and opt/lr at the epoch's last step)."""
    from expkit.lessons.jobs import Job

    epochs = max(len(v) for v in curves.values())
    scalars = {tag: [((i + 1) * spe, v) for i, v in enumerate(values)] for tag, values in curves.items()}
    return Job(path=Path(f"{num}_x"), num=num, overrides=[f"{k}={v}" for k, v in _flat(config).items()],
               status=status, config=config, metrics={"epoch": epochs, "step": epochs * spe}, choices={},
               command=[], val_size=360, scalars=scalars, label=str(num), arm=arm)


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


# ---------------------------------------------------------------- seeds and statistics
def test_the_verdict_rule_on_constructed_numbers():
    from expkit.lessons.stats import Comparison, overall

    def verdict(a, b, higher=True):
        return Comparison("claim", "val acc", "arm", "base", a, b, higher)

    better = verdict([0.90, 0.91, 0.92], [0.80, 0.82, 0.81])
    assert better.verdict == "reproduced" and better.low > 0 and better.p < 0.05
    assert abs(better.diff - 0.1) < 1e-9
    # The same numbers the other way round: the claim's direction is contradicted beyond noise.
    assert verdict([0.80, 0.82, 0.81], [0.90, 0.91, 0.92]).verdict == "not reproduced"
    # A loss claimed to be lower, and lower: reproduced.
    assert verdict([0.1, 0.12, 0.11], [0.3, 0.32, 0.29], higher=False).verdict == "reproduced"
    # Overlapping seeds: the interval includes zero.
    noisy = verdict([0.90, 0.80, 0.95], [0.85, 0.90, 0.88])
    assert noisy.verdict == "inconclusive" and noisy.low < 0 < noisy.high and "includes zero" in noisy.note
    one = verdict([0.95], [0.10])  # one seed: however large the difference, no verdict
    assert one.verdict == "inconclusive" and "needs at least 2 seeds" in one.note
    assert verdict([0.5, 0.5], [0.5, 0.5]).verdict == "not reproduced"  # identical: no effect at all
    assert verdict([0.6, 0.6], [0.5, 0.5]).verdict == "reproduced"  # no spread, a difference
    # Significant, but below the smallest difference that matters (two stalled nets): no evidence.
    stalled = Comparison("claim", "train loss", "a", "b", [2.302, 2.3021, 2.3019], [2.305, 2.3051, 2.3049], True,
                         min_effect=0.05)
    assert stalled.verdict == "inconclusive" and "smallest that matters" in stalled.note
    # Welch's p for these numbers, computed by hand: t = 0.1 / sqrt(2 * 0.01**2 / 3), df = 4.
    from scipy.stats import ttest_ind

    assert abs(better.p - ttest_ind([0.90, 0.91, 0.92], [0.80, 0.82, 0.81], equal_var=False).pvalue) < 1e-12
    assert overall([better, better]) == "reproduced"
    assert overall([better, noisy]) == "inconclusive"
    assert overall([better, noisy, verdict([0.8, 0.81], [0.9, 0.91])]) == "not reproduced"
    assert overall([]) == "inconclusive"


def seeds_of(arm: str, dropout: float, accs: list[float], start: int) -> list:
    return [fake_job(start + i, {"reg": {"dropout": dropout}, "seed": i},
                     {"val/acc": [a], "val/loss": [1 - a], "train/acc": [1.0], "train/loss": [0.01]}, arm=arm)
            for i, a in enumerate(accs)]


def test_a_lesson_is_judged_per_arm_over_its_seeds():
    from expkit.lessons.claims import judge

    off = seeds_of("reg.dropout=0.0", 0.0, [0.80, 0.81, 0.79], 0)
    found = judge("dropout", off + seeds_of("reg.dropout=0.5", 0.5, [0.90, 0.91, 0.89], 3))
    assert found.verdict == "reproduced" and len(found.comparisons) == 2
    assert {c.arm for c in found.comparisons} == {"reg.dropout=0.5"}
    assert all(len(c.arm_values) == 3 for c in found.comparisons)
    worse = judge("dropout", off + seeds_of("reg.dropout=0.5", 0.5, [0.70, 0.71, 0.69], 3))
    assert worse.verdict == "not reproduced"
    single = judge("dropout", off[:1] + seeds_of("reg.dropout=0.5", 0.5, [0.99], 3))
    assert single.verdict == "inconclusive"
    assert any("Dropout 0.5" in ln for ln in found.details)  # the words for one seed of each arm


def test_a_run_that_blew_up_counts_at_chance():
    from expkit.lessons.claims import judge

    def arm(lr, clip, accs, start, status="completed"):
        return [fake_job(start + i, {"optim": {"lr": lr}, "reg": {"grad_clip": clip}},
                         {"val/acc": [a]}, arm=f"lr={lr},clip={clip}", status=status) for i, a in enumerate(accs)]

    jobs = (arm(0.03, None, [0.90, 0.92, 0.91], 0) + arm(0.03, 1.0, [0.9, 0.9, 0.9], 3)
            + arm(0.3, None, [0.95, 0.95, 0.95], 6, status="failed") + arm(0.3, 1.0, [0.93, 0.94, 0.92], 9))
    found = judge("grad_clip", jobs)
    assert found.verdict == "reproduced"
    assert all(c.base_values == [0.1, 0.1, 0.1] for c in found.comparisons)


def test_lesson_list_names_each_claim_in_one_line(capsys):
    from expkit.cli import main

    assert main(["lesson", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(PRESETS)
    assert all(len(ln.split(None, 1)[1]) > 20 for ln in lines)


def test_expkit_lesson_runs_the_sweep_with_seeds_and_reports(tmp_path):
    proc = run_cli(["lesson", "dropout", "--seeds", "2", *SMALL[:-1], "model.width=16"], cwd=tmp_path, check=True)
    [sweep] = (tmp_path / "runs" / "lessons" / "dropout").iterdir()
    assert len(jobs_of(sweep)) == 4
    assert f"wrote {sweep.relative_to(tmp_path) / 'dropout.png'}" in proc.stdout
    text = (sweep / "dropout.md").read_text()
    assert "4 jobs: 2 arms x 2 seeds" in text and VERDICT.search(text)
    assert "| reg.dropout=0.5 | 2 | 2 |" in text  # the arm table: 2 seeds, 2 completed
    assert "Command: `expkit train -m experiment=dropout" in text and "seed=range(0,2)" in text
    width, height = png_size(sweep / "dropout.png")
    assert width >= 800 and height >= 300
