"""`pip install .` (not editable) ships conf/ inside the package and works from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_conf_and_runs_from_another_directory(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("expkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for conf_file in ("config.yaml", "model/cnn.yaml", "data/digits.yaml", "optim/adamw.yaml", "debug/fast.yaml"):
        assert f"expkit/conf/{conf_file}" in names, conf_file
    assert any(n.endswith("entry_points.txt") for n in names)

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import expkit; print(expkit.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    proc = subprocess.run([sys.executable, "-m", "expkit", "train", "+debug=fast", "trainer.progress=off"],
                          cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert list((elsewhere / "runs").rglob("metrics.json"))
