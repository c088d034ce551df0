"""The task group in one process: configs, the targets each task takes, the scorers against
scikit-learn's metrics, tables (data=csv, data=diabetes), and third-party model code as
people have it (a package's re-export, an installed model zoo)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from expkit.config.compose import check_overrides, compose, task_config
from expkit.config.schema import validate
from expkit.data import build_data
from expkit.errors import ConfigError


def checked(overrides: list[str]):
    return validate(task_config(compose(overrides)))


def refused(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as e:
        checked(overrides)
    return str(e.value)


# ------------------------------------------------------------------------ configs
def test_each_task_has_its_main_metric_as_the_sweep_default():
    assert checked([]).plain["sweep"]["metric"] == "val/acc"
    assert checked(["data=diabetes"]).plain["sweep"]["metric"] == "val/rmse"
    assert checked(["task=multilabel"]).plain["sweep"]["metric"] == "val/map"
    assert checked(["task=regression", "sweep.metric=val/r2"]).plain["sweep"]["metric"] == "val/r2"


def test_data_diabetes_is_a_regression_with_an_mlp_unless_the_command_line_says_otherwise():
    typed = checked(["data=diabetes"])
    assert (typed["task"].name, typed["model"].arch, typed["model"].depth) == ("regression", "mlp", 1)
    assert checked(["data=diabetes", "model=resnet"])["model"].arch == "resnet"
    # The records list the groups in their usual order, task after trainer.
    assert list(checked(["data=diabetes"]).plain)[:8] == ["data", "model", "optim", "sched", "init", "reg",
                                                          "trainer", "task"]


@pytest.mark.parametrize("overrides, words", [
    (["task=regression", "sweep.metric=val/acc"], ["sweep.metric", "'val/acc'", "task=regression", "val/rmse"]),
    (["task=regression", "trainer.early_stop.monitor=val/acc"], ["trainer.early_stop.monitor", "val/r2"]),
    (["task=multilabel", "sched=plateau", "sched.monitor=val/rmse"], ["sched.monitor", "val/map"]),
    (["task=regression", "reg.label_smoothing=0.1"], ["reg.label_smoothing", "task=classification"]),
    (["task=multilabel", "task.threshold=1.5"], ["task.threshold", "1.5", "(0, 1)"]),
    (["task=regression", "task.loss=hinge"], ["task.loss", "'hinge'", "mse, l1, huber"]),
    (["task=python"], ["task.factory", "a value is required"]),
    (["task=nosuch"], ["task"]),
])
def test_a_wrong_pairing_or_value_names_the_keys_and_what_is_allowed(overrides, words):
    try:
        message = refused(check_overrides(overrides))
    except ConfigError as e:  # caught while composing (an unknown choice)
        message = str(e)
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("overrides, words", [
    (["task=regression"], ["integer targets", "task=regression", "task=classification"]),
    (["data=diabetes", "task=classification"], ["float32", "task=classification", "task=regression"]),
    (["task=multilabel"], ["task=multilabel", "(N, labels)"]),
])
def test_targets_that_do_not_fit_the_task_are_refused_before_training(overrides, words):
    typed = checked(overrides)
    with pytest.raises(ConfigError) as e:
        build_data(typed["data"], 0, task=typed["task"].name)
    for word in words:
        assert word in str(e.value), (word, str(e.value))


# ------------------------------------------------------------------------ scorers
def test_regression_scores_are_scikit_learns_in_the_targets_units():
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    from expkit.tasks.builtin import Regression

    g = torch.Generator().manual_seed(0)
    truth = torch.randn(200, 2, generator=g) * torch.tensor([10.0, 0.5]) + torch.tensor([100.0, -3.0])
    predicted = truth + torch.randn(200, 2, generator=g) * torch.tensor([4.0, 0.2])
    mean, std = [100.0, -3.0], [10.0, 0.5]
    task = Regression("mse", 1.0, mean, std, ["a", "b"])

    def standardize(t):
        return (t - torch.tensor(mean)) / torch.tensor(std)

    scorer = task.scorer(torch.device("cpu"))
    for i in range(0, 200, 64):  # batch by batch, as an evaluation goes
        scorer.add(standardize(predicted[i:i + 64]), standardize(truth[i:i + 64]))
    got = scorer.result()
    t, p = truth.double().numpy(), predicted.double().numpy()
    assert got["r2"] == pytest.approx(r2_score(t, p), rel=1e-6)
    assert got["mae"] == pytest.approx(mean_absolute_error(t, p), rel=1e-6)
    assert got["rmse"] == pytest.approx(root_mean_squared_error(t, p), rel=1e-6)
    assert torch.allclose(task.predict(standardize(predicted)), predicted, atol=1e-4)


def test_multilabel_scores_are_scikit_learns():
    from sklearn.metrics import average_precision_score, f1_score

    from expkit.tasks.builtin import Multilabel

    g = torch.Generator().manual_seed(1)
    truth = (torch.rand(300, 4, generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.7])).float()
    logits = truth * 1.5 + torch.randn(300, 4, generator=g)
    task = Multilabel(4, [0.5, 0.4, 0.6, 0.5], ["a", "b", "c", "d"])
    scorer = task.scorer(torch.device("cpu"))
    for i in range(0, 300, 128):
        scorer.add(logits[i:i + 128], truth[i:i + 128])
    got = scorer.result()
    predicted = (torch.sigmoid(logits) > torch.tensor([0.5, 0.4, 0.6, 0.5])).numpy()
    assert got["f1_micro"] == pytest.approx(f1_score(truth.numpy(), predicted, average="micro"))
    assert got["f1_macro"] == pytest.approx(f1_score(truth.numpy(), predicted, average="macro"))
    assert got["map"] == pytest.approx(average_precision_score(truth.numpy(), torch.sigmoid(logits).numpy(),
                                                               average="macro"), rel=1e-6)
    expected_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, truth)
    assert got["loss"] == pytest.approx(float(expected_loss), rel=1e-5)


def test_top_k_accuracy_counts_the_true_class_among_the_k_highest_scores():
    from expkit.tasks.builtin import Classification

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 0.0]])
    y = torch.tensor([1, 1, 3])  # top-1 right 0 of 3; top-2 right: first (1 in {0,1}) only
    scorer = Classification(4, topk=2).scorer(torch.device("cpu"))
    scorer.add(logits, y)
    got = scorer.result()
    assert (got["acc"], got["top2_acc"]) == (0.0, pytest.approx(1 / 3))
    assert "top5_acc" not in Classification(4, topk=5).metrics()  # not logged with 5 classes or fewer


# ------------------------------------------------------------------------ tables
CSV = "size,rooms,city,price\n50,2,1,150.5\n80,3,2,240\n65,2,1,199.9\n120,5,3,410\n"


def table(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


def csv_data(path: Path, *more: str, task: str = "regression"):
    typed = checked(["data=csv", f"data.path={path}", f"task={task}", "data.val_fraction=0.25",
                     "data.test_fraction=0", *more])
    return build_data(typed["data"], 0, task=task)


def test_a_csv_table_is_standardized_from_its_training_split_and_recorded(tmp_path):
    rows = "".join(f"{i},{i % 4},{i % 3},{2.5 * i + 1}\n" for i in range(40))
    path = table(tmp_path, "size,rooms,city,price\n" + rows)
    data = csv_data(path, "data.target=price")
    x, y = (torch.cat(t) for t in zip(*data.train.iterate(), strict=True))
    assert data.input_shape == (3,) and y.shape == (30, 1)
    assert torch.allclose(x.mean(0), torch.zeros(3), atol=1e-5) and torch.allclose(y.mean(), torch.zeros(1), atol=1e-5)
    record = data.record()
    assert record["columns"] == {"features": ["size", "rooms", "city"], "targets": ["price"]}
    assert len(record["file_sha256"]) == 64 and record["task"] == "regression"
    assert csv_data(path, "data.target=[price,rooms]", "data.features=[size]").outputs == 2


def test_a_csv_text_column_is_classes_for_classification(tmp_path):
    rows = "".join(f"{i},{['cat', 'dog', 'eel'][i % 3]}\n" for i in range(30))
    data = csv_data(table(tmp_path, "w,animal\n" + rows), "data.target=animal", task="classification")
    assert data.classes == ["cat", "dog", "eel"] and data.outputs == 3
    for task in ("regression", "multilabel"):  # class names are no numbers to predict, nor 0/1 labels
        with pytest.raises(ConfigError, match=f"holds text, class names \\(cat, dog, eel\\); task={task} expected"):
            csv_data(table(tmp_path, "w,animal\n" + rows), "data.target=animal", task=task)


def test_one_csv_column_of_0_1_is_one_label_for_multilabel(tmp_path):
    rows = "".join(f"{i},{i % 2}\n" for i in range(40))
    data = csv_data(table(tmp_path, "w,spam\n" + rows), "data.target=[spam]", task="multilabel")
    _, y = (torch.cat(t) for t in zip(*data.train.iterate(), strict=True))
    assert data.outputs == 1 and y.shape == (30, 1) and set(y.flatten().tolist()) == {0.0, 1.0}
    assert data.record()["targets"] == ["spam"]


@pytest.mark.parametrize("text, more, words", [
    ("a,b,y\n1,,3\n", ["data.target=y"], ["row 2", "column 'b'", "missing"]),
    ("a,b,y\n1,x2,3\n", ["data.target=y"], ["row 2", "column 'b'", "'x2' is not a number"]),
    ("a,b,y\n1,2,3\n1,2\n", ["data.target=y"], ["row 3 has 2 values"]),
    (CSV, ["data.target=prize"], ["data.target", "'prize'", "did you mean price?"]),
    (CSV, [], ["data.target", "a column name"]),
    (CSV, ["data.target=price", "data.features=[price]"], ["data.features", "also a target"]),
    ("", ["data.target=y"], ["is empty"]),
])
def test_a_bad_table_names_the_row_and_column(tmp_path, text, more, words):
    with pytest.raises(ConfigError) as e:
        csv_data(table(tmp_path, text), *more)
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_diabetes_is_scikit_learns_bundled_raw_table():
    typed = checked(["data=diabetes"])
    data = build_data(typed["data"], 0, task="regression")
    assert sum(data.info["sizes"].values()) == 442 and data.input_shape == (10,)
    assert data.targets.names == ["progression"] and 140 < data.targets.mean[0] < 160


def test_own_data_with_float_targets_of_two_columns_is_a_regression():
    from expkit.config.imports import using
    from expkit.config.schema import PythonDataConfig

    x, y = torch.rand(50, 3), torch.rand(50, 2) * 10
    with using(objects={"data": lambda: (x, y)}):
        data = build_data(PythonDataConfig(name="python", factory="x:y"), 0, task="regression")
    assert data.outputs == 2 and data.targets.names == ["target0", "target1"]


# ------------------------------------------------------------- third-party model code
@pytest.fixture
def package_project(tmp_path, monkeypatch):
    """A project whose models/ package re-exports LeNet from models/lenet.py."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("from .lenet import LeNet\n")
    (tmp_path / "models" / "lenet.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass LeNet(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n        super().__init__()\n"
        "        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n\n"
        "    def forward(self, x):\n        return self.net(x)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in ("models", "models.lenet"):
        sys.modules.pop(name, None)


def test_a_factory_a_package_re_exports_records_the_file_that_defines_it(package_project):
    from expkit.config.imports import provenance

    typed = checked(["model=python", "model.factory=models:LeNet"])
    entry = provenance(typed)["model.factory"]
    assert entry["file"].endswith("models/__init__.py")
    assert entry["defined_in"]["module"] == "models.lenet" and len(entry["defined_in"]["sha256"]) == 64


def test_a_model_zoos_callable_is_recorded_by_package_and_version(tmp_path, monkeypatch):
    from importlib.metadata import version

    from expkit.config.imports import provenance

    monkeypatch.chdir(tmp_path)
    typed = checked(["model=python", "model.factory=torchvision.models:resnet18", "data=synthetic",
                     "data.shape=[3,32,32]"])
    entry = provenance(typed)["model.factory"]
    assert entry == {"path": "torchvision.models:resnet18", "package": "torchvision",
                     "version": version("torchvision")}


def test_a_run_folder_naming_an_installed_non_zoo_callable_needs_the_flag(tmp_path, monkeypatch):
    from expkit.config.imports import check_trust

    monkeypatch.chdir(tmp_path)
    cfg = {"model": {"arch": "python", "factory": "torch.hub:load"}}
    meta = {"imports": {"model.factory": {"package": "torch", "version": torch.__version__}}}
    with pytest.raises(ConfigError) as e:
        check_trust(cfg, meta, tmp_path / "run", trust=False, is_run=lambda p: False)
    assert "not a model zoo" in str(e.value) and "--trust-code" in str(e.value)
    check_trust(cfg, meta, tmp_path / "run", trust=True, is_run=lambda p: False)
    zoo = {"model": {"arch": "python", "factory": "torchvision.models:resnet18"}}
    with pytest.raises(ConfigError) as e:  # another version than the run recorded
        check_trust(zoo, {"imports": {"model.factory": {"package": "torchvision", "version": "0.1"}}},
                    tmp_path / "run", trust=False, is_run=lambda p: False)
    assert "0.1" in str(e.value)
    for named in ("os:system", "subprocess:getoutput", "posix:system", "builtins:eval", "expkit.nowhere:x",
                  "expkit.run.folder:write_atomic"):  # no flag lets them in
        own = {"model": {"arch": "python", "factory": named}}
        for trust in (False, True):
            with pytest.raises(ConfigError) as e:
                check_trust(own, {}, tmp_path / "run", trust=trust, is_run=lambda p: False)
            assert "with or without --trust-code" in str(e.value) and "Pass" not in str(e.value), str(e.value)


def test_a_model_whose_width_does_not_fit_the_task_names_both_numbers():
    from expkit.training.build import check_output_width

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3))
    with pytest.raises(ConfigError) as e:
        check_output_width(model, (10,), 1, None, task="regression")
    assert "[3]" in str(e.value) and "1 targets" in str(e.value)


def test_nan_r2_of_a_constant_target_is_not_a_number_not_a_crash():
    from expkit.tasks.builtin import Regression

    task = Regression("mse", 1.0, [5.0], [1.0], ["t"])
    scorer = task.scorer(torch.device("cpu"))
    scorer.add(torch.zeros(4, 1), torch.zeros(4, 1))
    assert math.isnan(scorer.result()["r2"])
    assert np.isfinite(scorer.result()["rmse"])


def test_torchvision_models_take_kwargs_and_adapt_an_imagenet_stem_to_small_images(caplog):
    from types import SimpleNamespace

    from expkit.models.tv import build_torchvision

    def build(small_input, **kwargs):
        return build_torchvision(SimpleNamespace(name="resnet18", kwargs=kwargs, small_input=small_input), None,
                                 (3, 32, 32), 10)

    with caplog.at_level("WARNING", logger="expkit"):
        kept = build("warn")
    assert kept.conv1.stride == (2, 2) and "model.small_input=adapt" in caplog.text
    adapted = build("adapt")
    assert adapted.conv1.kernel_size == (3, 3) and isinstance(adapted.maxpool, torch.nn.Identity)
    assert adapted(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError) as e:
        build("keep", nope=1)
    assert "model.kwargs" in str(e.value) and "nope" in str(e.value)
    assert build_torchvision(SimpleNamespace(name="mobilenet_v3_small", kwargs={"dropout": 0.1}, small_input="keep"),
                             None, (3, 32, 32), 4)(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
