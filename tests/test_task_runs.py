"""Regression, multi-label and own-loss runs through every command, as real processes: the
diabetes demo against scikit-learn's LinearRegression on the same split, eval, predict,
export (loaded with plain torch), expkit.load, runs, compare, reproduce, a bitwise resume
and an Optuna search that minimizes val/rmse."""

from __future__ import annotations

import csv
import io

import torch
import yaml
from conftest import git, only_run, read_json, run_cli, run_dirs

QUIET = ["trainer.progress=off", "trainer.graph=false"]
DIABETES_FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def linear_regression_r2() -> float:
    """scikit-learn's LinearRegression fitted on the run's training split, scored on its test
    split (the same examples: expkit's own split of data=diabetes, read in this process)."""
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    from expkit.config.compose import compose, task_config
    from expkit.config.schema import validate
    from expkit.data import build_data

    typed = validate(task_config(compose(["data=diabetes"])))
    data = build_data(typed["data"], typed["seed"], task="regression")

    def rows(loader):
        xs, ys = zip(*loader.iterate(), strict=True)
        return torch.cat(xs).numpy(), torch.cat(ys).numpy()

    (x_train, y_train), (x_test, y_test) = rows(data.train), rows(data.test)
    return float(r2_score(y_test, LinearRegression().fit(x_train, y_train).predict(x_test)))


def raw_rows(n: int) -> list[list[float]]:
    import gzip
    import importlib.util
    from pathlib import Path

    folder = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets" / "data"
    with gzip.open(folder / "diabetes_data_raw.csv.gz", "rt") as f:
        return [[float(v) for v in line.split()] for line in f.read().splitlines()[:n]]


def test_the_diabetes_demo_is_near_linear_regression_and_every_command_reads_it(git_repo):
    run_cli(["train", "task=regression", "data=diabetes", *QUIET], git_repo, check=True)
    run = only_run(git_repo)
    metrics = read_json(run / "metrics.json")
    reference = linear_regression_r2()
    print(f"test R²: expkit {metrics['test/r2']:.4f}, scikit-learn LinearRegression {reference:.4f}")
    assert metrics["test/r2"] >= reference - 0.05, (metrics["test/r2"], reference)
    assert {"val/rmse", "val/mae", "val/r2", "best/val/rmse", "test/rmse", "train/loss"} <= set(metrics)
    assert "val/acc" not in metrics and read_json(run / "meta.json")["task"]["main"] == "val/rmse"

    proc = run_cli(["eval", str(run)], git_repo, check=True)
    result = read_json(run / "eval" / "test-best.json")
    assert abs(result["r2"] - metrics["test/r2"]) < 1e-6 and (run / "eval" / "test-best.png").exists()
    assert "progression" in proc.stdout and "r2" in proc.stdout

    rows = raw_rows(3)
    (git_repo / "new.csv").write_text(",".join(DIABETES_FEATURES) + "\n" + "".join(
        ",".join(map(str, r)) + "\n" for r in rows))
    run_cli(["predict", str(run), "new.csv", "--out", "predicted.csv"], git_repo, check=True)
    predicted = [float(r["progression"]) for r in csv.DictReader(io.StringIO((git_repo / "predicted.csv").read_text()))]

    run_cli(["export", str(run)], git_repo, check=True)
    exported = torch.export.load(str(run / "export" / "model-best.pt2")).module()
    with torch.no_grad():
        from_export = exported(torch.tensor(rows, dtype=torch.float32)).flatten().tolist()
    assert all(abs(a - b) < 1e-3 for a, b in zip(predicted, from_export, strict=True)), (predicted, from_export)

    import expkit

    model, _ = expkit.load(run)
    info = model.expkit_info
    x = (torch.tensor(rows) - torch.tensor(info["mean"])) / torch.tensor(info["std"])
    with torch.no_grad():
        loaded = (model(x).flatten() * info["target_std"][0] + info["target_mean"][0]).tolist()
    assert all(abs(a - b) < 1e-3 for a, b in zip(predicted, loaded, strict=True))

    listed = run_cli(["runs"], git_repo, check=True).stdout
    assert "regression" in listed and "rmse" in listed
    git(git_repo, "add", "new.csv")
    git(git_repo, "commit", "-qm", "rows to predict")
    proc = run_cli(["reproduce", str(run)], git_repo, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_regression_resumes_bitwise_compares_and_an_optuna_search_minimizes_rmse(git_repo):
    base = ["data=diabetes", "trainer.epochs=2", "trainer.log_every=4", *QUIET]
    run_cli(["train", *base, "name=ref"], git_repo, check=True)
    run_cli(["train", *base, "trainer.max_steps=25", "name=cut"], git_repo, check=True)  # 18 steps an epoch
    ref, cut = (next(p for p in run_dirs(git_repo) if p.name.endswith(name)) for name in ("-ref", "-cut"))
    run_cli(["resume", str(cut), "trainer.max_steps=null"], git_repo, check=True)
    a = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed regression's weights differ from the straight run's"
    assert read_json(cut / "metrics.json")["test/rmse"] == read_json(ref / "metrics.json")["test/rmse"]
    shown = run_cli(["compare", str(ref), str(cut), "--plot", "both.png"], git_repo, check=True).stdout
    assert "val/rmse" in shown and (git_repo / "both.png").exists()

    run_cli(["train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "data=diabetes",
             "trainer.epochs=1", *QUIET], git_repo, check=True, timeout=600)
    sweep = next((git_repo / "runs" / "multirun").glob("*/*"))
    assert read_json(sweep / "sweep.json")["metric"] == "val/rmse"
    summary = (sweep / "summary.md").read_text()
    assert "sorted by val/rmse (lower is better)" in summary and "best val/rmse" in summary
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [read_json(p)["val/rmse"] for p in sweep.rglob("metrics.json")]
    assert results["best_value"] == min(values)


MULTILABEL = 240


def multilabel_table(path) -> None:
    """Four features and three labels that follow from them (an example may have several)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(MULTILABEL, 4, generator=g)
    labels = torch.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] > 0.5], 1).long()
    lines = ["f0,f1,f2,f3,l0,l1,l2"] + [",".join([*(f"{v:.4f}" for v in x[i].tolist()),
                                                  *map(str, labels[i].tolist())]) for i in range(MULTILABEL)]
    path.write_text("\n".join(lines) + "\n")


OWN_TASK = '''import gc

import torch


class Squared:
    """An own loss (squared error on the raw targets) and own metrics; two of them say
    whether Python's garbage collector was paused as the run started (this object is made
    then) and works again in the training loop (expkit/collector.py)."""

    def __init__(self):
        self.paused_at_start = float(not gc.isenabled())

    def loss(self, outputs, targets):
        return ((outputs.squeeze(1) - targets) ** 2).mean()

    def metrics(self, outputs, targets):
        return {"abs_error": float((outputs.squeeze(1) - targets).abs().mean()), "hits": 1.0,
                "paused_at_start": self.paused_at_start, "collector_on": float(gc.isenabled())}
'''


def test_multilabel_and_an_own_loss_go_through_the_same_commands(git_repo):
    multilabel_table(git_repo / "ml.csv")
    run_cli(["train", "task=multilabel", "data=csv", "data.path=ml.csv", "data.target=[l0,l1,l2]",
             "trainer.epochs=15", "data.batch_size=16", "name=ml", *QUIET], git_repo, check=True)
    ml = only_run(git_repo)
    metrics = read_json(ml / "metrics.json")
    assert metrics["test/map"] > 0.7 and {"val/f1_micro", "val/f1_macro", "best/val/map"} <= set(metrics)
    run_cli(["eval", str(ml)], git_repo, check=True)
    per_label = read_json(ml / "eval" / "test-best.json")["per_label"]
    assert list(per_label) == ["l0", "l1", "l2"] and per_label["l0"]["threshold"] == 0.5
    shown = run_cli(["predict", str(ml), "ml.csv"], git_repo, check=True).stdout
    assert "labels" in shown and "p_l2" in shown
    run_cli(["export", str(ml)], git_repo, check=True)
    assert read_json(ml / "export" / "model-best.pt2.json")["targets"] == ["l0", "l1", "l2"]

    (git_repo / "mytask.py").write_text(OWN_TASK)
    run_cli(["train", "task=python", "task.factory=mytask:Squared", "data=diabetes", "trainer.epochs=2",
             "sweep.metric=val/abs_error", "name=own", *QUIET], git_repo, check=True)
    own = next(p for p in run_dirs(git_repo) if p.name.endswith("own"))
    metrics = read_json(own / "metrics.json")
    assert {"val/loss", "val/abs_error", "val/hits", "best/val/abs_error", "test/abs_error"} <= set(metrics)
    assert metrics["val/paused_at_start"] == 1 and metrics["val/collector_on"] == 1
    assert read_json(own / "meta.json")["imports"]["task.factory"]["sha256"]
    run_cli(["resume", str(own), "trainer.epochs=3"], git_repo, check=True)  # the recorded file: no flag
    assert read_json(own / "metrics.json")["epoch"] == 3
    (git_repo / "mytask.py").write_text(OWN_TASK + "\n# changed\n")
    proc = run_cli(["eval", str(own)], git_repo)
    assert proc.returncode == 2 and "--trust-code" in proc.stderr and "task.factory" in proc.stderr
    assert run_cli(["eval", str(own), "--trust-code"], git_repo).returncode == 0
    assert read_json(own / "eval" / "test-best.json")["abs_error"] >= 0
