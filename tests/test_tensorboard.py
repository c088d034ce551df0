"""Every TensorBoard tab the course shows, read back with TensorBoard's own reader and
served by a real `tensorboard` process; the console and train.log stay plain text."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import build_trainer, only_run, read_json, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

# Its tests share one training run (a session fixture): on one xdist worker (make test's --dist loadgroup)
# that run happens once.
pytestmark = pytest.mark.xdist_group("tensorboard")

STEPS_PER_EPOCH = 4  # 256 examples / batch 64


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("tb")
    proc = run_cli(["train", "model=cnn", "data.sample=256", "trainer.epochs=2", "trainer.log_every=2",
                    "trainer.histogram_every=1", "trainer.progress=auto"], cwd=root, check=True)
    return only_run(root), proc


def accumulator(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_have_the_right_number_of_points(cnn_run):
    acc = accumulator(cnn_run[0])
    tags = acc.Tags()["scalars"]
    steps = 2 * STEPS_PER_EPOCH

    def count(tag):
        return len(acc.Scalars(tag))

    assert [e.step for e in acc.Scalars("opt/lr")] == [1, *range(2, steps + 1, 2)]  # first step, log steps
    assert count("train/loss") == count("train/acc") == steps // 2  # every 2 steps; 4 is a multiple of 2
    assert count("grad/norm") == steps // 2
    assert count("val/loss") == count("val/acc") == 2
    assert count("time/epoch_s") == count("time/samples_per_s") == 2
    layer_grads = [t for t in tags if t.startswith("grad/norm/")]
    layer_weights = [t for t in tags if t.startswith("weight/norm/")]
    assert len(layer_grads) == len(layer_weights) == 6  # 4 convs + 2 linear layers
    assert all(count(t) == steps // 2 for t in layer_grads)
    assert [e.step for e in acc.Scalars("val/acc")] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_histograms_images_graph_and_text(cnn_run):
    acc = accumulator(cnn_run[0])
    tags = acc.Tags()
    weight_hists = [t for t in tags["histograms"] if t.startswith("weights/")]
    grad_hists = [t for t in tags["histograms"] if t.startswith("grads/")]
    assert weight_hists and grad_hists
    assert all(len(acc.Histograms(t)) == 2 for t in weight_hists)  # histogram_every=1, two epochs
    assert {"data/train", "data/val", "val/misclassified"} <= set(tags["images"])
    assert acc.Images("data/train")[0].width > 8
    assert tags["graph"] is True and len(acc.Graph().node) > 5
    text = {t.split("/text_summary")[0] for t in tags["tensors"] if t.endswith("text_summary")}
    assert {"config", "git", "model"} <= text


def test_hparams_lists_the_runs_config_and_metrics(cnn_run):
    run_dir = cnn_run[0]
    acc = accumulator(run_dir)
    content = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optim.lr"].number_value == pytest.approx(0.001)
    assert start.hparams["model.arch"].string_value == "cnn"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/val_acc", "hparams/best_val_acc", "hparams/val_loss"} <= metric_tags
    metrics = read_json(run_dir / "metrics.json")
    assert acc.Scalars("hparams/val_acc")[0].value == pytest.approx(metrics["val/acc"])
    # Written into the run folder itself: no timestamped subfolder per run.
    assert [p for p in run_dir.iterdir() if p.is_dir()] == [] or all(
        p.name in ("checkpoints", ".hydra") for p in run_dir.iterdir() if p.is_dir())


def test_no_ansi_escapes_outside_a_terminal(cnn_run):
    run_dir, proc = cnn_run
    assert "\x1b[" not in proc.stdout and "\x1b[" not in proc.stderr
    assert "\x1b[" not in (run_dir / "train.log").read_text()
    assert "epoch 1/2 batch 4/4" in proc.stdout  # plain periodic lines instead of a bar


def test_progress_bar_in_a_terminal(tmp_path):
    """Under a real pseudo-terminal the console gets rich's bar, and train.log stays plain."""
    script = ("import pty, sys; sys.exit(pty.spawn([sys.argv[1], 'train', 'data.sample=128', 'trainer.epochs=1', "
              "'trainer.graph=false']) >> 8)")
    proc = subprocess.run([sys.executable, "-c", script, str(Path(sys.executable).parent / "expkit")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "epoch 1/1" in proc.stdout and "\x1b[" in proc.stdout  # the bar draws with escapes
    assert "\x1b[" not in (only_run(tmp_path) / "train.log").read_text()


def test_real_tensorboard_server_lists_the_run_and_its_tags(cnn_run):
    run_dir = cnn_run[0]
    logdir = run_dir.parents[1]  # runs/ as a user would pass it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir),
                               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline, runs = time.time() + 90, []
        while time.time() < deadline:
            try:
                runs = json.load(urllib.request.urlopen(f"{base}/data/runs", timeout=5))
                if runs:
                    break
            except OSError:
                pass
            time.sleep(1)
        expected = str(run_dir.relative_to(logdir))
        assert runs == [expected]  # each run once
        tags = json.load(urllib.request.urlopen(f"{base}/data/plugin/scalars/tags", timeout=10))
        assert {"train/loss", "val/acc", "opt/lr", "grad/norm"} <= set(tags[expected])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_non_finite_loss_stops_cleanly_naming_the_step(tmp_path):
    proc = run_cli(["train", "model=mlp", "reg=none", "optim=sgd", "optim.lr=1e12", "optim.momentum=0",
                    "trainer.log_every=1", "data.sample=256", "trainer.epochs=3", "trainer.progress=off"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "training loss became" in proc.stderr and "at step" in proc.stderr and "Traceback" not in proc.stderr
    run = only_run(tmp_path)
    meta = read_json(run / "meta.json")
    assert meta["status"] == "failed" and "at step" in meta["error"]
    step = int(meta["error"].split("at step ")[1].split(";")[0])
    assert 1 <= step <= 12
    acc = accumulator(run)
    assert len(acc.Scalars("opt/lr")) >= step  # curves up to the failure were flushed


def test_vanishing_gradients_warning(tmp_path):
    run_cli(["train", "model=mlp", "model.depth=20", "model.width=32", "model.activation=sigmoid", "reg=none",
             "trainer.log_every=1", "trainer.max_steps=2", "data.sample=128", "trainer.progress=off"],
            cwd=tmp_path, check=True)
    log = (only_run(tmp_path) / "train.log").read_text()
    assert "vanishing gradients at step 1" in log


def test_tensorboard_off_writes_no_events(tmp_path):
    run_cli(["train", "data.sample=128", "trainer.epochs=1", "trainer.tensorboard=false", "trainer.progress=off"],
            cwd=tmp_path, check=True)
    run = only_run(tmp_path)
    assert not list(run.glob("events.out.tfevents.*"))
    assert read_json(run / "metrics.json")["step"] == 2


def test_make_grid_draws_what_torchvision_draws():
    import torch
    from torchvision.utils import make_grid as tv_make_grid

    from expkit.training.tb import make_grid

    for shape in [(64, 1, 8, 8), (64, 3, 32, 32), (5, 1, 28, 28), (1, 3, 4, 4), (17, 3, 5, 7)]:
        x = torch.rand(shape)
        assert torch.equal(make_grid(x, nrow=8), tv_make_grid(x, nrow=8)), shape


def test_a_default_run_does_not_import_torchvision(tmp_path):
    # Importing torchvision costs about as much start-up as torch; image grids and the
    # versions in meta.json do without it, and meta.json still names its exact version.
    import torchvision

    code = ("import json, sys, expkit; "
            f"run, _ = expkit.train(['data.sample=128', 'trainer.epochs=1', 'trainer.progress=off'], "
            f"runs_root={str(tmp_path / 'runs')!r}); "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'; "
            "print(json.loads((run / 'meta.json').read_text())['versions']['torchvision'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == torchvision.__version__
    tags = accumulator(only_run(tmp_path)).Tags()
    assert {"data/train", "data/val", "val/misclassified"} <= set(tags["images"])


def test_gradient_norms_name_the_right_layers_when_one_is_frozen(tmp_path):
    """A frozen layer has no gradient: the others' norms keep their own names, and the values
    equal the norms computed directly; one event per step holds all of a step's scalars."""
    import torch

    trainer = build_trainer(tmp_path, ["model=mlp", "model.depth=3", "data.sample=128", "trainer.progress=off",
                                       "trainer.graph=false"])
    frozen, *trained = [name for name, _ in trainer.weights]
    dict(trainer.raw_model.named_parameters())[frozen].requires_grad_(False)
    x, y = next(trainer.data.train.iterate())
    trainer.train_step(x, y)
    names, norms = trainer.gradient_norms()
    trainer.log_gradients(names, [norm.item() for norm in norms])
    params = dict(trainer.raw_model.named_parameters())
    trainer.writer.close()

    acc = accumulator(tmp_path)
    tags = acc.Tags()["scalars"]
    assert f"grad/norm/{frozen}" not in tags and f"weight/norm/{frozen}" not in tags
    for name in trained:
        [event] = acc.Scalars(f"grad/norm/{name}")
        assert event.value == pytest.approx(params[name].grad.norm().item(), rel=1e-5)
        [event] = acc.Scalars(f"weight/norm/{name}")
        assert event.value == pytest.approx(params[name].detach().norm().item(), rel=1e-5)
    total = torch.stack([params[n].grad.norm() for n in trained]).norm().item()
    assert acc.Scalars("grad/norm")[0].value == pytest.approx(total, rel=1e-5)
    assert {e.step for t in tags for e in acc.Scalars(t)} == {1}
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    [events] = [list(EventFileLoader(str(p)).Load()) for p in tmp_path.glob("events.out.tfevents.*")]
    [step_one] = [e for e in events if e.HasField("summary") and e.step == 1]  # opt/lr and the norms
    assert {v.tag for v in step_one.summary.value} == set(tags)


def test_event_checksums_come_from_c_and_match_tensorboards_own(tmp_path):
    """expkit's writer swaps TensorBoard's pure-Python CRC-32C for google-crc32c's: the same
    masked checksums, and a file that TensorBoard's own reader (which checks every record
    with its pure-Python CRC) loads without a data-loss error."""
    import random

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference
    from tensorboard.summary.writer import record_writer

    from expkit.training.tb import Writer

    writer = Writer(tmp_path)
    assert getattr(record_writer.masked_crc32c, "expkit_fast", False), "google-crc32c's C code was not used"
    rng = random.Random(0)
    for size in (0, 1, 8, 13, 255, 4096):
        data = rng.randbytes(size)
        assert record_writer.masked_crc32c(data) == reference(data)
    for step in range(3):
        writer.scalars({"a": step * 0.5, "b/c": -1.0}, step)
    writer.close()
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    [path] = tmp_path.glob("events.out.tfevents.*")  # the loader turns simple values into tensors
    events = EventFileLoader(str(path)).Load()
    values = [(e.step, v.tag, v.tensor.float_val[0]) for e in events for v in e.summary.value]
    assert values == [(s, t, v) for s in range(3) for t, v in (("a", s * 0.5), ("b/c", -1.0))]
