"""`expkit resume`, end to end with real processes and real signals: exact continuation
(bitwise-equal weights, identical per-step losses) at an epoch boundary and mid-epoch,
SIGTERM / SIGUSR1 / SIGINT, SIGKILL during a checkpoint write, damaged checkpoints,
a malicious pickle, TensorBoard without duplicated steps, bad input, overrides and git."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from expkit.errors import ConfigError

# Its tests share one training run (a session fixture): on one xdist worker (make test's --dist loadgroup)
# that run happens once.
pytestmark = pytest.mark.xdist_group("resume")

# Small and fast, with everything that makes exactness hard switched on: dropout,
# batchnorm, random-crop augmentation, a shuffled order; 16 steps per epoch.
BASE = ["data.sample=256", "model=cnn", "data.augment=true", "reg.dropout=0.3", "reg.batchnorm=true",
        "data.batch_size=16", "trainer.progress=off", "trainer.log_every=1", "trainer.graph=false",
        "trainer.num_threads=1", "trainer.keep_last=2", "trainer.epochs=3"]
STEPS_PER_EPOCH, EPOCHS = 16, 3
TIMEOUT = 180

# Runs the real CLI with a sleep after every training step, so a signal can be sent in
# the middle of an epoch. The sleep changes nothing in the numbers.
SLOW_STEPS = r"""
import sys, time
import expkit.training.trainer as T
_step, _sleep = T.Trainer.train_step, float(sys.argv[1])
def train_step(self, x, y):
    out = _step(self, x, y)
    time.sleep(_sleep)
    return out
T.Trainer.train_step = train_step
from expkit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("EXPKIT_")}
    out.update(extra)
    return out


def expkit(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "expkit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, env=kw.pop("env", env()), **kw)


def expkit_many(jobs: list[tuple[list[str], Path]]) -> list[subprocess.CompletedProcess]:
    """Several CLI runs at once (2 cores, one thread each), in order of `jobs`."""
    procs = [subprocess.Popen([sys.executable, "-m", "expkit", *args], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env()) for args, cwd in jobs]
    out = []
    for p, (args, _) in zip(procs, jobs, strict=True):
        stdout, stderr = p.communicate(timeout=TIMEOUT)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def start(args: list[str], cwd: Path, step_sleep: float | None = None, **extra_env: str) -> subprocess.Popen:
    prefix = [sys.executable, "-c", SLOW_STEPS, str(step_sleep)] if step_sleep else [sys.executable, "-m", "expkit"]
    log = open(cwd / f"proc-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([*prefix, *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env(**extra_env))


def run_dir(cwd: Path, name: str) -> Path:
    found = list(cwd.glob(f"runs/*/*-{name}"))
    assert len(found) == 1, found
    return found[0]


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the training process ended before the moment to signal it"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"weights differ (not bitwise equal) in {differ}"


def train_losses(run: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


def raw_steps(run: Path, tag: str) -> list[list[int]]:
    """The steps of `tag` in each event file, in order, as written (before any purge)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = []
    for path in sorted(run.glob("events.out.tfevents.*")):
        files.append([e.step for e in EventFileLoader(str(path)).Load()
                      if e.HasField("summary") and any(v.tag == tag for v in e.summary.value)])
    return files


def purge_steps(run: Path) -> list[int]:
    """Steps of the SessionLog START events with which a resumed writer purges the rest."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    out = []
    for path in sorted(run.glob("events.out.tfevents.*")):
        out += [e.step for e in EventFileLoader(str(path)).Load()
                if e.HasField("session_log") and e.session_log.status == SessionLog.START]
    return out


def assert_same_training(run: Path, straight: Path) -> None:
    """Bitwise-equal weights, identical per-step losses, one TensorBoard point per step."""
    assert_same_weights(run, straight)
    losses = train_losses(run)
    steps = [s for s, _ in losses]
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1)), steps  # strictly increasing, no repeats
    assert losses == train_losses(straight)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="session")
def straight(tmp_path_factory) -> Path:
    """The reference: EPOCHS epochs in one go."""
    cwd = tmp_path_factory.mktemp("straight")
    proc = expkit(["train", *BASE, "name=straight"], cwd)
    assert proc.returncode == 0, proc.stderr
    return run_dir(cwd, "straight")


def test_keep_last_leaves_k_numbered_checkpoints_plus_links(straight):
    folder = straight / "checkpoints"
    numbered = sorted(p.name for p in folder.glob("step-*.pt"))
    assert numbered == [f"step-{2 * STEPS_PER_EPOCH:09d}.pt", f"step-{3 * STEPS_PER_EPOCH:09d}.pt"]
    assert os.path.samefile(folder / "last.pt", folder / numbered[-1]) and (folder / "best.pt").exists()
    assert not list(folder.glob(".*"))


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env=env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                           GIT_COMMITTER_EMAIL="t@t"))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")
def test_extend_a_finished_run_at_an_epoch_boundary_exactly_with_git_checks(tmp_path, straight):
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("runs/\nproc-*.log\n")
    (tmp_path / "train.py").write_text("v = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    first = expkit(["train", *BASE, "trainer.epochs=1", "name=part"], tmp_path)
    assert first.returncode == 0, first.stderr
    run = run_dir(tmp_path, "part")
    recorded = meta(run)
    assert recorded["status"] == "completed" and recorded["git"]["commit"]
    (tmp_path / "train.py").write_text("v = 2\n")
    git(tmp_path, "commit", "-qam", "second")

    # A finished run needs more epochs; unsafe overrides need --force; --strict refuses new code.
    done, unsafe, strict = expkit_many([
        (["resume", str(run)], tmp_path),
        (["resume", str(run), "trainer.epochs=3", "optim.lr=0.1", "model.hidden=64"], tmp_path),
        (["resume", str(run), "trainer.epochs=3", "--strict"], tmp_path)])
    assert "already completed" in one_line_error(done)
    line = one_line_error(unsafe)
    assert "optim.lr=0.1, model.hidden=64" in line and "--force" in line
    line = one_line_error(strict)
    assert "--strict" in line and recorded["git"]["commit"] in line
    assert meta(run) == recorded  # refusals leave the run's record alone
    assert "epochs: 1" in (run / "config.yaml").read_text()

    resumed = expkit(["resume", str(run), "trainer.epochs=3"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "warning" in resumed.stderr and "commit" in resumed.stderr
    after = meta(run)
    assert after["status"] == "completed" and after["metrics"]["step"] == EPOCHS * STEPS_PER_EPOCH
    entry = after["resumes"][-1]
    assert entry["step"] == STEPS_PER_EPOCH and entry["overrides"] == ["trainer.epochs=3"]
    assert recorded["git"]["commit"] in entry["git_warning"] and entry["git"]["commit"] != recorded["git"]["commit"]
    assert "epochs: 3" in (run / "config.yaml").read_text()
    assert_same_training(run, straight)
    assert purge_steps(run) == [STEPS_PER_EPOCH + 1]


def test_stop_signals_mid_epoch_then_resume_each_time_is_exact(tmp_path, straight):
    """SIGTERM, then SIGUSR1 to the resumed process, then SIGINT to the next one, each a
    few steps into an epoch; the last resume finishes. Three interruptions, one exact run."""
    stages = [
        ("SIGTERM", ["train", *BASE, "name=sig"], f"checkpoints/step-{STEPS_PER_EPOCH:09d}.pt"),
        ("SIGUSR1", ["resume", "RUN"], f"checkpoints/step-{2 * STEPS_PER_EPOCH:09d}.pt"),
        ("SIGINT", ["resume", "RUN"], None),  # a few steps after the resume
    ]
    run, saved_steps = None, []
    for sig, args, wait_file in stages:
        args = [str(run) if a == "RUN" else a for a in args]
        proc = start(args, tmp_path, step_sleep=0.03)
        if wait_file:
            wait_for(lambda wait_file=wait_file: list(tmp_path.glob(f"runs/*/*-sig/{wait_file}")), proc)
        else:
            logs = sorted(tmp_path.glob("proc-*.log"))[-1]
            wait_for(lambda logs=logs: "resumed from" in logs.read_text(), proc)
            time.sleep(0.15)
        proc.send_signal(getattr(signal, sig))
        code = proc.wait(timeout=TIMEOUT)
        run = run or run_dir(tmp_path, "sig")
        assert code == 128 + getattr(signal, sig), (sig, code)
        m = meta(run)
        assert m["status"] == "interrupted" and m["signal"] == sig
        saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert saved["step"] == m["interrupted_at_step"]
        assert 0 < saved["batch"] < STEPS_PER_EPOCH, f"{sig}: not in the middle of an epoch ({saved['batch']})"
        saved_steps.append(saved["step"])
    assert saved_steps == sorted(saved_steps)

    resumed = expkit(["resume", str(run)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    m = meta(run)
    assert m["status"] == "completed" and "interrupted_at_step" not in m and "signal" not in m
    assert [r["step"] for r in m["resumes"]] == saved_steps
    assert_same_training(run, straight)
    assert purge_steps(run) == [s + 1 for s in saved_steps]


def test_sigkill_while_writing_a_checkpoint_then_resume_is_exact(tmp_path, straight):
    # The second checkpoint (end of epoch 2) is written slowly; SIGKILL lands inside it.
    proc = start(["train", *BASE, "name=kill"], tmp_path, EXPKIT_TEST_SLOW_WRITE="0.02")
    tmp = f".step-{2 * STEPS_PER_EPOCH:09d}.pt.*tmp"  # the writer's temp file (its name holds the pid)
    wait_for(lambda: list(tmp_path.glob(f"runs/*/*/checkpoints/{tmp}")), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    run = run_dir(tmp_path, "kill")
    assert meta(run)["status"] == "running"
    assert list((run / "checkpoints").glob(tmp))
    # The events of epoch 2 reached the disk before the kill: TensorBoard must purge them.
    # (Training goes on while the checkpoint is written in the background: maybe further.)
    assert max(raw_steps(run, "train/loss")[0]) >= 2 * STEPS_PER_EPOCH

    resumed = expkit(["resume", str(run)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert meta(run)["resumes"][-1]["step"] == STEPS_PER_EPOCH  # not from scratch
    assert_same_training(run, straight)
    assert purge_steps(run) == [STEPS_PER_EPOCH + 1]
    assert not list((run / "checkpoints").glob(".*.tmp"))


def copy_run(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)  # -a keeps the hard links
    return dst


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, straight):
    newest = f"step-{3 * STEPS_PER_EPOCH:09d}.pt"
    runs = {damage: copy_run(straight, tmp_path / damage) for damage in ("truncated", "bit-flipped")}
    path = runs["truncated"] / "checkpoints" / newest
    os.truncate(path, path.stat().st_size - 1000)
    path = runs["bit-flipped"] / "checkpoints" / newest
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))

    results = expkit_many([(["resume", str(run)], tmp_path) for run in runs.values()])
    for (damage, run), resumed in zip(runs.items(), results, strict=True):
        assert resumed.returncode == 0, (damage, resumed.stderr)
        out = resumed.stdout + resumed.stderr
        assert f"{newest} is unusable" in out and "resuming from" in out, damage
        entry = meta(run)["resumes"][-1]
        assert entry["checkpoint"] == f"checkpoints/step-{2 * STEPS_PER_EPOCH:09d}.pt" and entry["skipped"]
        assert_same_weights(run, straight)  # epoch 3 trained again, exactly


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path, straight):
    run = copy_run(straight, tmp_path / "run")
    marker = tmp_path / "pwned"
    evil = run / "checkpoints" / "step-000000099.pt"
    evil.write_bytes(make_malicious(run / "checkpoints" / "last.pt", marker))
    import hashlib

    Path(f"{evil}.sha256").write_text(hashlib.sha256(evil.read_bytes()).hexdigest())
    before = meta(run)
    refused = expkit(["resume", str(run), "trainer.epochs=4"], tmp_path)
    line = one_line_error(refused)
    assert "would run code" in line and "system" in line and evil.name in line
    assert not marker.exists()
    assert meta(run) == before


def make_malicious(good: Path, marker: Path) -> bytes:
    """A real checkpoint plus an object whose unpickling runs a shell command."""
    import io

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = torch.load(good, weights_only=True)
    state["step"] = 99
    state["extra"] = Evil()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, straight):
    not_a_run = tmp_path / "plain"
    not_a_run.mkdir()
    no_ckpt = copy_run(straight, tmp_path / "no-ckpt")
    shutil.rmtree(no_ckpt / "checkpoints")
    other = copy_run(straight, tmp_path / "other")
    cases = {
        "missing": (["resume", str(tmp_path / "nope")], "does not exist"),
        "not a run": (["resume", str(not_a_run)], "not an expkit run folder"),
        "no checkpoint": (["resume", str(no_ckpt)], "no checkpoint"),
        "group choice": (["resume", str(other), "model=mlp", "--force"], "config group"),
        "unknown key": (["resume", str(other), "trainer.epochz=5"], "not a key"),
        "no run dir": (["resume"], "usage"),
    }
    before, config = meta(other), (other / "config.yaml").read_text()
    events = sorted(other.glob("events.*"))
    wrong = ["resume", str(other), "model.hidden=64", "trainer.epochs=4", "--force"]
    *results, wrong = expkit_many([(args, tmp_path) for args, _ in cases.values()] + [(wrong, tmp_path)])
    for (what, (_, expected)), result in zip(cases.items(), results, strict=True):
        line = one_line_error(result)
        assert expected in line, (what, line)

    # A checkpoint from another model: refused, and the run's record is left as it was.
    line = one_line_error(wrong)
    assert "does not fit" in line and "model.hidden" in line and "128" in line and "64" in line
    assert meta(other) == before and (other / "config.yaml").read_text() == config
    assert sorted(other.glob("events.*")) == events


def test_forced_optimizer_values_are_the_ones_the_resumed_run_trains_with(tmp_path, straight):
    run = copy_run(straight, tmp_path / "forced")
    proc = expkit(["resume", str(run), f"trainer.epochs={EPOCHS + 1}", "optim.lr=0.01", "optim.weight_decay=0.5",
                   "--force"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    groups = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.01, 0.01]
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]  # biases and norms still decay-free
    last_epoch = next(line for line in (run / "train.log").read_text().splitlines()
                      if f"epoch {EPOCHS + 1}/{EPOCHS + 1} step" in line and "best" in line)
    assert last_epoch.endswith("lr 0.01"), last_epoch


def test_a_resume_may_not_change_the_lr_under_a_schedule():
    from omegaconf import OmegaConf

    from expkit.resuming import resumed_config

    cfg = OmegaConf.create({"trainer": {"epochs": 3}, "optim": {"lr": 0.001}, "sched": {"name": "cosine"}})
    with pytest.raises(ConfigError, match="optim.lr: value '0.1': a resume cannot change the LR under sched=cosine"):
        resumed_config(cfg, ["optim.lr=0.1"], force=True, objects=None)
    cfg.sched.name = "none"
    assert resumed_config(cfg, ["optim.lr=0.1"], force=True, objects=None).optim.lr == 0.1
    cfg.sched.warmup_epochs = 2  # the warm-up's target LR comes from the checkpoint too
    with pytest.raises(ConfigError, match="under sched.warmup_epochs=2"):
        resumed_config(cfg, ["optim.lr=0.1"], force=True, objects=None)


def test_which_overrides_and_epoch_changes_a_resume_accepts():
    from omegaconf import OmegaConf

    from expkit.resuming import check_epochs, check_overrides
    from expkit.run.checkpoint import Checkpoint

    cfg = OmegaConf.create({"trainer": {"epochs": 3, "max_steps": None}, "model": {"width": 32},
                            "sched": {"name": "none"}})
    assert check_overrides(cfg, ["trainer.epochs=5", "trainer.max_steps=null"], force=False) is None
    assert "model.width" in check_overrides(cfg, ["model.width=64"], force=False)
    assert check_overrides(cfg, ["model.width=64"], force=True) is None
    assert "config group" in check_overrides(cfg, ["model=mlp"], force=True)
    assert "not a key" in check_overrides(cfg, ["trainer.epoch=5"], force=True)
    assert "did you mean trainer.epochs?" in check_overrides(cfg, ["trainer.max_epochs=5"], force=False)
    assert "key=value" in check_overrides(cfg, ["trainer.epochs"], force=False)

    def state(epoch, epochs=3):
        return Checkpoint(model={}, optimizer={}, epoch=epoch, batch=0, step=epoch, rng={},
                          config={"trainer": {"epochs": epochs}})

    def with_(sched, epochs):
        return OmegaConf.merge(cfg, {"sched": {"name": sched}, "trainer": {"epochs": epochs}})

    assert check_epochs(with_("none", 5), state(3), force=False) is None
    assert "less than" in check_epochs(with_("none", 2), state(3), force=True)
    assert "--force" in check_epochs(with_("cosine", 5), state(3), force=False)
    assert check_epochs(with_("cosine", 5), state(3), force=True) is None
    assert check_epochs(with_("cosine", 3), state(2), force=False) is None  # same length: fine
    assert "onecycle" in check_epochs(with_("onecycle", 5), state(3), force=True)


def test_max_steps_mid_epoch_then_resume_is_exact_with_sparse_logging(tmp_path):
    """trainer.max_steps stops in the middle of an epoch; resuming continues that epoch,
    and train/loss points (every 5 steps, across the stop) average the same batches."""
    sparse = [*BASE[:6], "trainer.log_every=5", *BASE[7:]]
    ref_cwd, cut_cwd = tmp_path / "ref", tmp_path / "cut"
    ref_cwd.mkdir(), cut_cwd.mkdir()
    assert expkit(["train", *sparse, "name=ref"], ref_cwd).returncode == 0
    assert expkit(["train", *sparse, "trainer.max_steps=23", "name=cut"], cut_cwd).returncode == 0
    cut = run_dir(cut_cwd, "cut")
    state = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch"], state["step"]) == (1, 23 - STEPS_PER_EPOCH, 23)
    proc = expkit(["resume", str(cut), "trainer.max_steps=null"], cut_cwd)
    assert proc.returncode == 0, proc.stderr
    ref = run_dir(ref_cwd, "ref")
    assert_same_weights(cut, ref)
    assert train_losses(cut) == train_losses(ref)
