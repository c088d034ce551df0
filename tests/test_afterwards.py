"""After training, on one small real run (trained once per module, in-process): the test
split scored with best.pt, `expkit eval`, `expkit predict`, `expkit export`, expkit.load and
expkit.evaluate, early stopping (and its exact resume), and bad input that changes nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_json

import expkit
from expkit.cli import main

# A tiny MLP on a sample of the digits; min_delta 1 (accuracy cannot improve by more) makes
# early stopping end it after exactly 1 + patience evaluations.
TRAIN = ["data.sample=256", "model=mlp", "model.depth=1", "model.width=32", "trainer.epochs=8",
         "trainer.progress=off", "trainer.graph=false", "trainer.early_stop.patience=2",
         "trainer.early_stop.min_delta=1.0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("afterwards")
    run_dir, metrics = expkit.train(TRAIN, runs_root=str(root / "runs"))
    return Path(run_dir)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_training_stops_early_and_scores_best_pt_on_the_test_split(run):
    meta, metrics = read_json(run / "meta.json"), read_json(run / "metrics.json")
    assert meta["status"] == "completed"
    assert meta["stopped_early"]["epoch"] == 3 and metrics["epoch"] == 3  # 1 + patience evaluations
    assert meta["stopped_early"]["monitor"] == "val/acc" and meta["stopped_early"]["best_epoch"] in (1, 2, 3)
    data = meta["data"]
    assert data["name"] == "digits" and data["test_split"] == "carved" and data["test_fraction"] == 0.2
    assert data["sizes"] == {"train": 256, "val": 64, "test": 64} and data["split_seed"] == 0
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert metrics["test/step"] == best["step"]
    log = (run / "train.log").read_text()
    assert f"test: scored checkpoints/best.pt (epoch {best['epoch']}, step {best['step']}" in log
    assert "early stop after epoch 3" in log
    # The same number as scoring best.pt afterwards.
    result = expkit.evaluate(run, split="test", save=False)
    assert result["acc"] == metrics["test/acc"]
    assert result["loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    from conftest import scalars

    tags = scalars(run)
    assert tags["hparams/test_acc"][0][1] == pytest.approx(metrics["test/acc"])
    assert "hparams/test_loss" in tags


def test_eval_writes_json_png_and_a_tensorboard_image(run, capsys):
    before = snapshot(run)
    assert main(["eval", str(run), "--checkpoint", "last", "--split", "val"]) == 0
    out = capsys.readouterr().out
    result = read_json(run / "eval" / "val-last.json")
    assert {"split", "checkpoint", "step", "loss", "acc", "per_class", "confusion"} <= result.keys()
    assert (result["split"], result["checkpoint"]) == ("val", "last")
    # last.pt's weights are what the last evaluation in training saw.
    metrics = read_json(run / "metrics.json")
    assert result["acc"] == metrics["val/acc"] and result["step"] == metrics["step"]
    confusion = np.array(result["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == result["examples"] == 64
    assert np.trace(confusion) / confusion.sum() == pytest.approx(result["acc"])
    for i, name in enumerate(result["classes"]):
        assert result["per_class"][name]["support"] == confusion[i].sum()
        recall = result["per_class"][name]["recall"]
        assert recall is None or recall == pytest.approx(confusion[i, i] / confusion[i].sum())
    assert f"acc {result['acc']:.4f}" in out and "precision" in out
    assert (run / "eval" / "val-last.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    assert "eval/val-last/confusion" in acc.Tags()["images"]
    after = snapshot(run)
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed and all(k.startswith(("eval/", "events.out")) for k in set(after) - set(before))


def test_load_gives_the_checkpoint_in_eval_mode_with_its_config(run):
    model, cfg = expkit.load(run, checkpoint="best")
    assert not model.training and cfg.model.arch == "mlp"
    saved = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert model.expkit_info["classes"] == [str(i) for i in range(10)]


def digit_pngs(run: Path, folder: Path, n: int = 6) -> tuple[list[Path], torch.Tensor, list[int]]:
    """The first n test examples as 8-bit PNGs, the same pixels as the model's raw input, the labels."""
    from PIL import Image

    from expkit.config.schema import DataConfig
    from expkit.data import build_data

    data = build_data(DataConfig(name="digits", val_fraction=0.2, sample=256), seed=0)  # as the run
    x, y = next(iter(data.test.iterate()))
    raw = (x[:n] * torch.tensor(data.std) + torch.tensor(data.mean)).clamp(0, 1)
    pixels = (raw * 255).round().to(torch.uint8)
    folder.mkdir()
    paths = []
    for i in range(n):
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(pixels[i, 0].numpy()).save(paths[-1])
    return paths, pixels.float() / 255, y[:n].tolist()


def test_class_predictions_of_table_rows_name_the_row_and_line_up():
    from expkit.afterwards.predict import table, to_csv

    rows = [{"path": "new.csv", "row": n, "class": c, "index": 0, "probability": p, "top": [(c, p), ("setosa", 0.1)]}
            for n, c, p in [(2, "virginica", 0.8), (3, "setosa", 0.55)]]
    lines = to_csv(rows).splitlines()
    assert lines[0] == "path,row,class,probability,top1_class,top1_probability,top2_class,top2_probability"
    assert lines[1].startswith("new.csv,2,virginica,0.800000,virginica")
    shown = table(rows).splitlines()
    assert shown[0].split() == ["path", "row", "class", "probability", "top"]
    starts = {line.index(word) for line, word in zip(shown, ["probability", "0.8000", "0.5500"], strict=True)}
    assert len(starts) == 1, shown  # every column starts where its header does


def test_eval_prints_class_names_from_a_run_on_one_line_each():
    from expkit.afterwards.evaluate import table

    scores = {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}
    result = {"split": "test", "examples": 4, "data": "csv", "checkpoint": "best.pt", "epoch": 1, "step": 2,
              "loss": 0.1, "acc": 0.5, "per_class": {"cat\nfake row": scores, "\x1b[2Jdog": scores}}
    shown = table(result)
    assert "\x1b" not in shown and "cat\\x0afake row" in shown and "\\x1b[2Jdog" in shown
    assert len(shown.splitlines()) == 6  # the header lines, the column names, one line per class


def test_predict_preprocesses_like_training(run, tmp_path, capsys):
    paths, raw, _ = digit_pngs(run, tmp_path / "images")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(paths[0]), str(tmp_path / "images"), "--top", "2", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "path,class,probability,top1_class,top1_probability,top2_class,top2_probability"
    assert len(lines) == 1 + 1 + len(paths)  # the file itself, then the folder's images
    model, _ = expkit.load(run)
    info = model.expkit_info
    with torch.no_grad():
        probs = torch.softmax(model((raw - info["mean"][0]) / info["std"][0]), 1)
    for row, p in zip(lines[2:], probs, strict=True):
        cells = row.split(",")
        assert cells[1] == str(int(p.argmax())) and float(cells[2]) == pytest.approx(float(p.max()), abs=1e-5)
    assert "digit0.png" in capsys.readouterr().out


@pytest.mark.parametrize("channels", [1, 3])
def test_predict_reads_images_as_torchvision_does_for_folder_data(tmp_path, channels):
    from PIL import Image
    from torchvision import transforms

    from expkit.afterwards.predict import load_image

    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (21, 17, 3), dtype=np.uint8)).save(path)
    steps = [transforms.Resize((12, 12)), *([transforms.Grayscale(1)] if channels == 1 else []), transforms.ToTensor()]
    with Image.open(path) as img:
        expected = transforms.Compose(steps)(img.convert("RGB"))
    assert torch.equal(load_image(path, (channels, 12, 12)), expected)


def test_export_loads_with_plain_torch_and_gives_the_checkpoints_outputs(run, tmp_path, capsys):
    files = {"torchscript": run / "export" / "model-best.torchscript.pt", "exported": run / "export" / "model-best.pt2"}
    # No --format: torch.export, not the TorchScript torch deprecates.
    assert main(["export", str(run)]) == 0
    assert files["exported"].is_file() and not files["torchscript"].exists()
    assert "(exported, checkpoint best" in capsys.readouterr().out
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    model, _ = expkit.load(run)
    info = model.expkit_info
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model((x - info["mean"][0]) / info["std"][0])
    torch.save({"x": x, "expected": expected}, tmp_path / "batch.pt")
    # A fresh interpreter in which expkit cannot be imported at all.
    code = ("import sys, torch; sys.modules['expkit'] = None; "
            "b = torch.load(sys.argv[1]); ts = torch.jit.load(sys.argv[2]); "
            "ep = torch.export.load(sys.argv[3]).module(); "
            "[torch.testing.assert_close(m(b['x']), b['expected'], rtol=1e-5, atol=1e-6) for m in (ts, ep)]; "
            "print('same', ep(b['x'][:1]).shape)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "batch.pt"), str(files["torchscript"]),
                           str(files["exported"])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "same torch.Size([1, 10])" in proc.stdout
    assert json.loads((run / "export" / "model-best.pt2.json").read_text())["classes"] == info["classes"]


def test_bad_input_is_exit_2_one_line_and_changes_nothing(run, tmp_path, capsys):
    before = snapshot(run)
    other = tmp_path / "other.pt"  # a checkpoint of another model (a wider MLP)
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    state["model"] = {k: torch.zeros(64, *v.shape[1:]) if v.ndim and v.shape[0] == 32 else v
                      for k, v in state["model"].items()}
    torch.save(state, other)
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    best = damaged / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:-100])
    (tmp_path / "bad.png").write_text("not an image")
    damaged_before = snapshot(damaged)
    cases = [
        (["eval", str(tmp_path)], "not an expkit run folder"),
        (["eval", str(run), "--checkpoint", str(other)], "does not fit this run's model"),
        (["eval", str(run), "--checkpoint", "step-9.pt"], "no such file"),
        (["eval", str(run), "data.test_fraction=0"], "has no test split"),
        (["eval", str(run), "data=synthetic"], "this run's model takes [1, 8, 8] in 10 classes"),
        (["eval", str(damaged)], "does not match its checksum"),
        (["predict", str(run), str(tmp_path / "bad.png")], "bad.png: cannot be read as an image"),
        (["export", str(damaged)], "does not match its checksum"),
    ]
    for args, words in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, (args, err)
    assert snapshot(run) == before and snapshot(damaged) == damaged_before


def test_resuming_a_run_that_stopped_early_is_refused_unless_patience_grows(run):
    from expkit.errors import ConfigError
    from expkit.resuming import resume

    before = snapshot(run)
    with pytest.raises(ConfigError, match="stopped early after epoch 3 .*trainer.early_stop.patience"):
        resume(run, [])
    assert snapshot(run) == before


def test_a_run_from_before_the_test_split_keeps_every_example_out_of_the_test_split(run, tmp_path):
    """Its config.yaml has no data.test_fraction: it trained on examples a test split would now hold."""
    import yaml

    from expkit.afterwards.loading import open_run
    from expkit.errors import ConfigError

    old = tmp_path / "old"
    shutil.copytree(run, old)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    del cfg["data"]["test_fraction"]
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    from expkit.run.provenance import sha256_file

    for file in (old / "checkpoints").glob("*.pt"):  # its checkpoints recorded the same config
        state = torch.load(file, weights_only=True)
        del state["config"]["data"]["test_fraction"]
        torch.save(state, file)
        Path(f"{file}.sha256").write_text(sha256_file(file))
    assert open_run(old)[1].data.test_fraction == 0.0
    with pytest.raises(ConfigError, match="has no test split"):
        expkit.evaluate(old, save=False)
    assert expkit.evaluate(old, split="val", save=False)["examples"] == 64


def test_eval_on_another_data_set_of_the_same_shape_gets_its_own_files(run, tmp_path):
    """The run's 64 test digits as an ImageFolder tree (train/ and test/): scored by eval through
    torchvision's folder path, and by predict's own image reading, the two agree exactly."""
    from expkit.afterwards.predict import predict

    paths, _, labels = digit_pngs(run, tmp_path / "flat", n=64)
    for part in ("train", "test"):
        for path, label in zip(paths, labels, strict=True):
            (tmp_path / "tree" / part / str(label)).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp_path / "tree" / part / str(label) / path.name)
    own = run / "eval" / "test-best.json"
    expkit.evaluate(run)
    before = own.read_bytes()
    args = ["data=folder", f"data.root={tmp_path / 'tree'}", "data.image_size=8", "data.channels=1"]
    result = expkit.evaluate(run, overrides=args)
    assert result["data"] == "folder" and result["examples"] == 64 and result["overrides"] == args
    rows = predict(run, [str(tmp_path / "tree" / "test")])
    assert result["acc"] == sum(r["class"] == Path(r["path"]).parent.name for r in rows) / 64
    assert own.read_bytes() == before
    [written] = (run / "eval").glob("test-best-folder-*.json")
    assert json.loads(written.read_text())["acc"] == result["acc"]
