"""Own code by import path (model=python, data=python, init=function) and as objects through
the Python API: what the factory receives, what the init function does to the weights,
what sample mode leaves of a Dataset, the checks before anything is built, the record in
meta.json, and resume importing from the folder the run started in."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import FAST, build_trainer, only_run, read_json, run_cli
from torch import nn

import expkit
from expkit.config.compose import check_overrides, task_config
from expkit.config.imports import using
from expkit.config.schema import PythonDataConfig, validate
from expkit.errors import ConfigError

OWN = '''
import torch
from torch import nn

CALLS = []
READ = []


def build_model(input_shape, num_classes, hidden=3):
    CALLS.append({"input_shape": input_shape, "num_classes": num_classes, "hidden": hidden})
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


class Net(nn.Module):
    def __init__(self, num_classes, width=4):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


def init_weights(m):
    if isinstance(m, nn.Linear):
        nn.init.constant_(m.weight, 0.5)
        nn.init.zeros_(m.bias)


class Squares(torch.utils.data.Dataset):
    classes = ["small", "large"]

    def __init__(self, n, offset=0):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        READ.append(i + self.offset)
        x = torch.full((1, 4, 4), float(i % 7))
        return x, int(i % 7 > 3)


def make_data(n_train=500, with_val=True):
    return Squares(n_train), Squares(50, 10_000) if with_val else None, Squares(30, 20_000)


def tensors():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    return x.numpy(), (x[:, 0] > 0).long() * 2
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with own code in ownmod.py, as the current directory."""
    (tmp_path / "ownmod.py").write_text(OWN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("ownmod", None)


def test_model_factory_gets_shape_classes_and_kwargs_and_init_function_sets_weights(project):
    trainer = build_trainer(project / "run", [
        "model=python", "model.factory=ownmod:build_model", "+model.kwargs.hidden=5",
        "init=function", "init.function=ownmod:init_weights", "data.sample=64"])
    calls = sys.modules["ownmod"].CALLS
    assert calls == [{"input_shape": (1, 8, 8), "num_classes": 10, "hidden": 5}]
    linears = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(5, 64), (10, 5)]
    assert all(bool((m.weight == 0.5).all()) and bool((m.bias == 0).all()) for m in linears)


def test_an_nn_module_class_gets_the_parameters_it_names_and_lazy_layers_their_shapes(project):
    trainer = build_trainer(project / "run", ["model=python", "model.factory=ownmod:Net", "+model.kwargs.width=7",
                                              "data.sample=64"])
    linears = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)]
    assert linears[-1].in_features == 7 and linears[-1].out_features == 10
    assert tuple(linears[0].weight.shape) == (7, 64)


def test_dataset_factory_sample_mode_reads_only_what_it_uses(project):
    with using():
        from expkit.data import build_data

        cfg = PythonDataConfig(name="python", factory="ownmod:make_data", sample=40, batch_size=8)
        data = build_data(cfg, seed=0)
    assert data.info["sizes"] == {"train": 40, "val": 4, "test": 4}  # val in proportion, test as val
    assert data.classes == ["small", "large"] and data.input_shape == (1, 4, 4)
    read = sys.modules["ownmod"].READ
    assert len(read) == 48 and sum(i >= 10_000 for i in read) == 8  # 40 train + 4 val + 4 test examples
    x, y = next(iter(data.train.iterate(0)))
    assert x.shape == (8, 1, 4, 4) and set(y.tolist()) <= {0, 1}
    # Without a val split, one is held out of train (data.val_fraction), as for built-in data.
    cfg = PythonDataConfig(name="python", factory="ownmod:make_data", kwargs={"n_train": 100, "with_val": False},
                           val_fraction=0.2)
    assert build_data(cfg, seed=0).info["sizes"] == {"train": 80, "val": 20, "test": 30}


def test_tensors_from_a_factory_and_classes_from_the_labels(project):
    from expkit.data import build_data

    data = build_data(PythonDataConfig(name="python", factory="ownmod:tensors"), seed=0)
    # No test split given: data.test_fraction (0.2) of it is carved out first, as for built-in data.
    assert data.info["sizes"] == {"train": 144, "val": 16, "test": 40} and data.input_shape == (6,)
    assert data.info["test_split"] == "carved"
    assert data.num_classes == 3  # labels 0 and 2: the largest label + 1
    assert len(data.train.x) == 144 and abs(float(data.train.x.mean())) < 0.1  # normalized
    assert data.train.x.dtype == torch.float32  # from a float64 numpy array


@pytest.mark.parametrize("overrides, message", [
    (["model=python", "model.factory=ownmdo:build_model"],
     "model.factory: value 'ownmdo:build_model': there is no module ownmdo in {dir} (found there: ownmod; "
     "did you mean ownmod?)."),
    (["model=python", "model.factory=ownmod:build_modle"],
     "model.factory: value 'ownmod:build_modle': ownmod ({dir}/ownmod.py) has no build_modle; it defines Net, "
     "Squares, build_model, init_weights, make_data, tensors; did you mean build_model?"),
    (["model=python", "model.factory=os:system"], "is in the standard library; import "
     "paths name the project's own code, a module in {dir}."),
    (["model=python"], "model.factory: a value is required with model=python"),
    (["model=python", "model.factory=__main__:Net"],
     "model.factory: value '__main__:Net' names an object of the notebook or script that trained the run, which "
     "this process does not have; pass the object itself: expkit.train(..., model=...) or "
     "expkit.resume(RUN_DIR, model=...)."),
    (["model=python", "model.factory=ownmod:build_model", "+model.kwargs.width=2"],
     "model.kwargs.width: ownmod:build_model has no parameter width; its parameters: input_shape, num_classes, "
     "hidden."),
    (["model=python", "model.factory=ownmod:Squares"], "is a class that is not a torch.nn.Module"),
    (["init=function", "init.function=ownmod:build_model"], "must take one argument, the module"),
    (["data=python", "data.factory=ownmod:init_weights"], "missing a required argument: 'm'"),
])
def test_bad_paths_are_refused_before_anything_is_built(project, overrides, message):
    with pytest.raises(ConfigError) as e:
        validate(task_config(check_overrides(overrides)))
    assert message.format(dir=project) in str(e.value)
    assert not (project / "runs").exists()


@pytest.mark.parametrize("folder, path, what", [
    ("/", "json.decoder:JSONDecoder", "is in the standard library"),
    (str(Path(__file__).resolve().parents[1]), "expkit.run.folder:write_atomic", "is expkit's own code"),
])
def test_the_standard_library_and_expkits_own_are_refused_even_inside_the_project(monkeypatch, folder, path, what):
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(ConfigError) as e:
        validate(task_config(check_overrides(["data=python", f"data.factory={path}"])))
    assert f"data.factory: value {path!r}: module {path.split(':')[0]} (" in str(e.value)
    assert f") {what}; import paths name the project's own code, a module in {folder}." in str(e.value)


def test_objects_of_the_caller_train_resume_and_are_recorded(project):
    class Tiny(nn.Module):
        def __init__(self, input_shape, num_classes):
            super().__init__()
            self.fc = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

        def forward(self, x):
            return self.fc(x.flatten(1))

    def init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)

    g = torch.Generator().manual_seed(0)
    train = torch.utils.data.TensorDataset(torch.rand(120, 1, 3, 3, generator=g), torch.randint(0, 4, (120,)))
    val = (torch.rand(20, 1, 3, 3, generator=g), torch.randint(0, 4, (20,), generator=g))
    fast = ["trainer.epochs=1", "trainer.progress=off", "trainer.graph=false"]
    run_dir, metrics = expkit.train(fast, model=Tiny, data=(train, val), init=init_weights)
    assert metrics["epoch"] == 1
    meta = read_json(run_dir / "meta.json")
    shown = "<function test_objects_of_the_caller_train_resume_and_are_recorded.<locals>.init_weights given to"
    assert meta["imports"]["init.function"]["path"].startswith(shown)
    assert meta["imports"]["init.function"]["file"] == __file__  # the notebook's source where it has no file
    assert meta["imports"]["data.factory"]["path"] == "<tuple (TensorDataset, tuple) given to the Python API>"
    assert "data.factory: <tuple (TensorDataset, tuple)" in (run_dir / "train.log").read_text()
    with pytest.raises(ConfigError, match="model: Tiny"):
        expkit.train(fast, model=Tiny((1, 3, 3), 4))
    with pytest.raises(ConfigError, match="trainer.devices: objects given to expkit.train stay in this process"):
        expkit.train([*fast, "trainer.devices=2"], model=Tiny)
    with pytest.raises(ConfigError, match="data.factory"):  # the Dataset is not in the run folder
        expkit.resume(run_dir, ["trainer.epochs=2"], model=Tiny, init=init_weights)
    assert read_json(run_dir / "meta.json")["status"] == "completed"  # a refused resume changed nothing
    _, metrics = expkit.resume(run_dir, ["trainer.epochs=2"], model=Tiny, data=(train, val), init=init_weights)
    assert metrics["epoch"] == 2 and len(read_json(run_dir / "meta.json")["resumes"]) == 1


def test_resume_imports_from_the_project_folder_never_from_the_record(project, tmp_path_factory, monkeypatch):
    run_dir, _ = expkit.train(["trainer.epochs=1", "trainer.progress=off", "data.sample=64", "trainer.graph=false"],
                              model="ownmod:build_model", init="ownmod:init_weights")
    meta = read_json(run_dir / "meta.json")
    assert meta["imports"]["model.factory"] == {
        "path": "ownmod:build_model", "file": str(project / "ownmod.py"),
        "sha256": __import__("hashlib").sha256((project / "ownmod.py").read_bytes()).hexdigest()}
    sys.modules.pop("ownmod")
    # The run's recorded folder is not where code is looked for: from elsewhere it is refused,
    # naming that folder, before anything is imported.
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError, match=rf"not a file of the project folder .*trained in \({project}"):
        expkit.resume(project / run_dir, ["trainer.epochs=2"])
    assert "ownmod" not in sys.modules
    monkeypatch.chdir(project)
    _, metrics = expkit.resume(run_dir, ["trainer.epochs=2"])
    assert metrics["epoch"] == 2
    assert Path(sys.modules["ownmod"].__file__) == project / "ownmod.py"


def test_cli_and_its_ddp_workers_import_from_the_current_directory(project):
    args = ["model=python", "model.factory=ownmod:build_model", "init=function", "init.function=ownmod:init_weights",
            "trainer.devices=2", "trainer.accelerator=cpu", *FAST]
    run_cli(["train", *args], cwd=project, check=True)
    run = only_run(project)
    log = (run / "train.log").read_text()
    assert f"model.factory: ownmod:build_model from {project / 'ownmod.py'}" in log
    assert read_json(run / "meta.json")["world_size"] == 2 and "in_features=64, out_features=3" in log
    proc = run_cli(["train", "model=python", "model.factory=ownmod:nope", *FAST], cwd=project)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [textwrap.dedent(f"""\
        expkit train: model.factory: value 'ownmod:nope': ownmod ({project}/ownmod.py) has no nope; it defines Net, \
Squares, build_model, init_weights, make_data, tensors.""")]
    assert len(list((project / "runs").rglob("meta.json"))) == 1


def test_the_readmes_examples_work_as_its_commands_say(tmp_path, monkeypatch):
    """README.md's own model, Dataset and init function, each with the overrides in its comment."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own model, data and init function", 1)[1].split("\n## ", 1)[0]
    overrides = []
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        name, command = re.match(r"# (\w+)\.py +expkit train (.*)\n", block).groups()
        (tmp_path / f"{name}.py").write_text(block)
        overrides += command.split()
    assert len(overrides) == 8, overrides
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        trainer = build_trainer(tmp_path / "run", overrides)
    finally:
        for name in ("mymodels", "mydata", "myinit"):
            sys.modules.pop(name, None)
    # (train, val) given: the test split is carved out of train first (data.test_fraction 0.2),
    # then sample mode keeps 500 training examples and val and test in proportion.
    assert trainer.data.info["sizes"] == {"train": 500, "val": 125, "test": 125}
    linears = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)]
    assert linears[0].out_features == 64 and all(not m.bias.detach().any() for m in linears)


def test_a_dataset_with_one_hot_labels_is_refused_by_name(project):
    from expkit.data import build_data

    one_hot = torch.utils.data.TensorDataset(torch.rand(20, 3), torch.eye(2)[torch.randint(0, 2, (20,))])
    with using(objects={"data": lambda: one_hot}), pytest.raises(ConfigError) as e:
        build_data(PythonDataConfig(name="python", factory="x:y"), seed=0)
    # One-hot rows are multi-label targets: classification says so, and names the task that takes them.
    assert "expected an integer class index" in str(e.value) and "task=multilabel" in str(e.value)
