"""expkit on a real NVIDIA GPU: `make gpu-check` runs these (`pytest -m gpu`).

Without CUDA every test here is skipped at collection, with the reason, and without
importing torch when the machine has no NVIDIA driver at all, so `make test` on a CPU pays
nothing for them. What they check:

- the default run and a resnet run train on cuda, and their checkpoints load without a GPU;
- data.on_device keeps the whole split on the GPU, and a training step makes no host-device
  sync (torch.cuda.set_sync_debug_mode("error") around steps that are not log steps; a
  whole epoch's syncs counted, which must not grow with its steps);
- bf16, and fp16 with its GradScaler, resume bitwise exactly with trainer.deterministic=true
  (dropout draws from the CUDA generator, so its state must come back too);
- channels_last and trainer.compile=true train and resume;
- NCCL under `torchrun --nproc_per_node=1` with trainer.devices=1: initialise, train,
  checkpoint, resume;
- a SIGTERM during a GPU run writes a checkpoint, and the run resumes from it.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from conftest import EXPKIT, build_trainer, only_run, read_json

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")


def cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch where no NVIDIA driver exists."""
    if not any(os.path.exists(f) for f in DRIVER_FILES):
        return False
    import torch

    return torch.cuda.is_available()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU (torch.cuda.is_available() is false); "
                       "`make gpu-check` runs these on a GPU machine"),
]

GPU = ["trainer.accelerator=cuda", "trainer.progress=off", "trainer.graph=false"]
# CIFAR-shaped synthetic data: 3x32x32, 10 classes.
CIFAR_SHAPE = ["data=synthetic", "data.shape=[3,32,32]", "data.batch_size=64"]
CIFAR = [*CIFAR_SHAPE, "data.size=1024"]
STEPS = 16  # per epoch with CIFAR
TIMEOUT = 300


def expkit(args: list[str], cwd: Path, timeout: float = TIMEOUT, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EXPKIT_")}
    full_env.update(env)
    return subprocess.run([EXPKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def checkpoint(run: Path, name: str = "last.pt") -> dict:
    import torch

    # No map_location: a GPU run's checkpoint must hold CPU tensors (loadable without a GPU).
    return torch.load(run / "checkpoints" / name, weights_only=True)


def tensors(obj, prefix: str = ""):
    """(path, tensor) for every tensor in a nested checkpoint."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}/{i}")


def assert_bitwise_equal(a: dict, b: dict, keys=("model", "optimizer")) -> None:
    import torch

    for key in keys:
        left, right = dict(tensors(a[key])), dict(tensors(b[key]))
        assert left.keys() == right.keys(), key
        differ = [p for p in left if not torch.equal(left[p], right[p])]
        assert not differ, f"{key}: {len(differ)} tensors differ, first {differ[:3]}"


def start_all(jobs: list[tuple[list[str], Path]]) -> list[subprocess.CompletedProcess]:
    """Several expkit runs at once on the GPU (the GPU machine has cores to spare)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPKIT_")}
    procs = [(subprocess.Popen([EXPKIT, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env), args) for args, cwd in jobs]
    out = []
    for p, args in procs:
        stdout, stderr = p.communicate(timeout=TIMEOUT)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def dirs(tmp_path: Path, *names: str) -> list[Path]:
    out = [tmp_path / n for n in names]
    for d in out:
        d.mkdir()
    return out


# ------------------------------------------------------------------ training on cuda
def test_default_run_trains_on_cuda(tmp_path):
    proc = expkit(["train", *GPU, "trainer.epochs=2"], tmp_path)
    ok(proc)
    run = only_run(tmp_path)
    assert "device cuda:0" in (run / "train.log").read_text()
    assert read_json(run / "meta.json")["status"] == "completed"
    assert read_json(run / "metrics.json")["val/acc"] > 0.5  # digits, 2 epochs: far above chance (0.1)
    state = checkpoint(run)
    assert all(t.device.type == "cpu" for _, t in tensors(state))
    assert "cuda" in state["rng"]


def test_resnet_run_trains_on_cuda_and_evaluates(tmp_path):
    ok(expkit(["train", *GPU, *CIFAR, "model=resnet", "trainer.epochs=3"], tmp_path))
    run = only_run(tmp_path)
    assert read_json(run / "metrics.json")["val/acc"] > 0.5  # 0.96 after 2 epochs on a CPU; chance is 0.1
    # The GPU run's checkpoint scores on the CPU too (no GPU needed afterwards).
    ok(expkit(["eval", str(run), "trainer.accelerator=cpu", "--split", "val"], tmp_path, CUDA_VISIBLE_DEVICES=""))
    assert list((run / "eval").glob("val-best-*.json"))


# ---------------------------------------------------- data on the GPU, no per-step sync
SYNC_STEPS = 64


def sync_trainer(tmp_path: Path, precision: str):
    """A Trainer in this process: CIFAR-shaped data with augmentation (on the tensor path),
    logging only at the end of an epoch, TensorBoard on; epoch 0 run as a warm-up."""
    trainer = build_trainer(tmp_path / "run", [
        *GPU, *CIFAR_SHAPE, f"data.size={SYNC_STEPS * 64}", "model=cnn", "data.augment=true",
        f"trainer.precision={precision}", f"trainer.log_every={10**9}", "trainer.checkpoint=false"])
    assert len(trainer.data.train) == SYNC_STEPS
    trainer.train_epoch(0)
    return trainer


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_data_stays_on_the_gpu_and_a_step_makes_no_host_sync(tmp_path, precision):
    """fp16 is left out on purpose: torch's GradScaler.step reads found_inf with .item(),
    one host sync per step by its design (unless the optimizer is fused)."""
    import torch

    trainer = sync_trainer(tmp_path, precision)
    loader = trainer.data.train
    assert loader.x.device.type == "cuda" and loader.y.device.type == "cuda", "data.on_device: split not on the GPU"
    assert trainer.data.val.x.device.type == "cuda"
    assert next(trainer.raw_model.parameters()).device.type == "cuda"
    loader.sampler.set_epoch(1)
    batches = loader.iterate()
    x, y = next(batches)  # the epoch's order moves to the GPU once, here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):  # steps that are not log steps: augmentation, forward, backward, optimizer
            x, y = trainer.to_device(x, y)
            trainer.train_step(x, y)
            x, y = next(batches)
    finally:
        torch.cuda.set_sync_debug_mode(0)

    # A whole epoch through the loop (train tally, NaN check, opt/lr, schedule, stop check):
    # the syncs it makes are per epoch (the order, the log steps), not per step.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_epoch(2)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert syncs, "the detector saw no sync at all; the log step makes at least one"
    assert len(syncs) < SYNC_STEPS // 4, f"{len(syncs)} syncs in an epoch of {SYNC_STEPS} steps: {syncs[:4]}"
    trainer.writer.close()


# ------------------------------------------------------- bitwise resume, bf16 and fp16
@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_mixed_precision_resumes_bitwise_exactly(tmp_path, precision):
    """An uninterrupted run and one stopped mid-epoch (trainer.max_steps) then resumed end
    with the same bits. The cnn, not the resnet: AdaptiveAvgPool2d's CUDA backward has no
    deterministic kernel. Dropout on the GPU draws from the CUDA generator, so the CUDA RNG
    state in the checkpoint is what makes the masks after the resume match."""
    common = [*GPU, *CIFAR, "model=cnn", "reg.dropout=0.3", f"trainer.precision={precision}",
              "trainer.deterministic=true", "trainer.epochs=2", "trainer.log_every=4"]
    straight_cwd, cut_cwd = dirs(tmp_path, "straight", "cut")
    for proc in start_all([(["train", *common], straight_cwd),
                           (["train", *common, f"trainer.max_steps={STEPS + 5}"], cut_cwd)]):
        ok(proc)
    cut = only_run(cut_cwd)
    state = checkpoint(cut)
    assert (state["epoch"], state["batch"], state["step"]) == (1, 5, STEPS + 5)
    assert "cuda" in state["rng"]
    if precision == "16":
        assert state["scaler"] and state["scaler"]["scale"] > 0
    ok(expkit(["resume", str(cut), "trainer.max_steps=null"], cut_cwd))
    a, b = checkpoint(only_run(straight_cwd)), checkpoint(cut)
    assert a["step"] == b["step"] == 2 * STEPS
    assert_bitwise_equal(a, b)
    if precision == "16":
        assert a["scaler"] == b["scaler"]
    assert read_json(only_run(straight_cwd) / "metrics.json")["val/loss"] == read_json(cut / "metrics.json")["val/loss"]


# ------------------------------------------------------------ channels_last, compile
@pytest.mark.parametrize("switch", ["trainer.channels_last=true", "trainer.compile=true"])
def test_channels_last_and_compile_train_and_resume(tmp_path, switch):
    import torch

    model = "model=resnet" if "channels_last" in switch else "model=cnn"  # cnn: a shorter compile
    args = [*GPU, *CIFAR, model, switch, "trainer.epochs=2", "trainer.precision=bf16"]
    ok(expkit(["train", *args, f"trainer.max_steps={STEPS + 3}"], tmp_path, timeout=600))
    run = only_run(tmp_path)
    state = checkpoint(run)
    assert state["step"] == STEPS + 3
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state["model"])  # the plain module
    if "channels_last" in switch:
        convs = [t for k, t in state["model"].items() if t.ndim == 4]
        assert convs and all(t.is_contiguous(memory_format=torch.channels_last) for t in convs)
    ok(expkit(["resume", str(run), "trainer.max_steps=null"], tmp_path, timeout=600))
    assert read_json(run / "meta.json")["status"] == "completed"
    assert checkpoint(run)["step"] == 2 * STEPS
    assert math.isfinite(read_json(run / "metrics.json")["val/loss"])


# ---------------------------------------------------------------------------- NCCL
def test_nccl_under_torchrun_with_one_process(tmp_path):
    """One GPU cannot host two NCCL ranks (NCCL refuses two ranks on the same device), so
    this is the most of the NCCL path one GPU can run: torchrun --nproc_per_node=1 with
    trainer.devices=1 joins an NCCL group of one and trains through DDP (its gradient
    all-reduce, the evaluation's all-reduce, the stop-flag agreement, barriers)."""
    args = [*GPU, *CIFAR, "model=cnn", "trainer.devices=1", "trainer.epochs=2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPKIT_")}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=1", "-m", "expkit", "train", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    ok(proc)
    run = only_run(tmp_path)
    log = (run / "train.log").read_text()
    assert "process group: backend nccl, rank 0 of 1" in log and "device cuda:0" in log
    state = checkpoint(run)
    assert state["step"] == 2 * STEPS and not any(k.startswith("module.") for k in state["model"])
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=1", "-m", "expkit", "resume", str(run),
                           "trainer.epochs=3"], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    ok(proc)
    assert checkpoint(run)["step"] == 3 * STEPS
    assert read_json(run / "meta.json")["status"] == "completed"


# --------------------------------------------------------------------------- SIGTERM
# The real CLI with a short sleep after every training step, so a signal lands mid-epoch;
# a file says when the run has taken a few steps.
SLOW_STEPS = r"""
import sys, time
from pathlib import Path
import expkit.training.trainer as T
_step, marker = T.Trainer.train_step, Path(sys.argv[1])
def train_step(self, x, y):
    out = _step(self, x, y)
    if self.step == 5:
        marker.touch()
    time.sleep(0.05)
    return out
T.Trainer.train_step = train_step
from expkit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_on_the_gpu_writes_a_checkpoint_and_resumes(tmp_path):
    marker = tmp_path / "stepped"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPKIT_")}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_STEPS, str(marker), "train", *GPU, *CIFAR, "model=cnn",
                             "trainer.epochs=2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run took no steps"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    run = only_run(tmp_path)
    meta = read_json(run / "meta.json")
    assert meta["status"] == "interrupted" and meta["signal"] == "SIGTERM"
    state = checkpoint(run)
    assert 5 <= state["step"] < 2 * STEPS and state["step"] == meta["interrupted_at_step"]
    ok(expkit(["resume", str(run)], tmp_path))
    assert read_json(run / "meta.json")["status"] == "completed"
    assert checkpoint(run)["step"] == 2 * STEPS
