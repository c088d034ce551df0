"""A user's own model in their own package, used without editing expkit: an entry point
in the `expkit.model` group plus a YAML file in a folder passed with --config-dir."""

from __future__ import annotations

import textwrap

from conftest import FAST, only_run, read_json, run_cli

PLUGIN = '''
from dataclasses import dataclass

from torch import nn

import expkit
from expkit.config.schema import ModelConfig


@dataclass
class TinyConfig(ModelConfig):
    hidden: int = 7


@expkit.register_model("tiny", schema=TinyConfig)
def build_tiny(cfg, reg, input_shape, num_classes):
    features = 1
    for d in input_shape:
        features *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(features, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, num_classes))
'''


def test_user_model_from_own_package_and_config_dir(tmp_path):
    site = tmp_path / "site"
    (site / "mymodels-0.1.dist-info").mkdir(parents=True)
    (site / "mymodels.py").write_text(PLUGIN)
    (site / "mymodels-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mymodels\nVersion: 0.1\n")
    (site / "mymodels-0.1.dist-info" / "entry_points.txt").write_text("[expkit.model]\ntiny = mymodels\n")
    conf = tmp_path / "myconf" / "model"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(textwrap.dedent("""\
        arch: tiny
        activation: relu
        hidden: 5
    """))
    env = {"PYTHONPATH": str(site)}
    run_cli(["train", "--config-dir", str(tmp_path / "myconf"), "model=tiny", *FAST], cwd=tmp_path, env=env,
            check=True)
    run = only_run(tmp_path)
    assert read_json(run / "meta.json")["status"] == "completed"
    log = (run / "train.log").read_text()
    assert "in_features=64, out_features=5" in log
    proc = run_cli(["train", "--config-dir", str(tmp_path / "myconf"), "model=tiny", "model.hidden=x", *FAST],
                   cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "model.hidden: value 'x' is not of type int" in proc.stderr
