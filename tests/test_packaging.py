"""Packaging: a built wheel ships conf/ inside the package and, installed into a fresh
virtual environment, trains from any folder; `pip install -e .` prints no setuptools
warning (each folder of conf/ is a package, the license a SPDX string).

The fresh environments get this environment's site-packages for the dependencies (a .pth
file), so torch is not installed again; expkit itself goes in with --no-deps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
# Both tests build in the repository (build/, *.egg-info): one pytest-xdist worker runs them.
pytestmark = pytest.mark.xdist_group("packaging")


def fresh_venv(path: Path) -> Path:
    """A new virtual environment whose dependencies come from this one; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # A plain path line: the folder joins sys.path after the venv's own site-packages, and
    # its .pth files (this environment's editable expkit) are not run.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # --ignore-installed: the expkit of this environment, seen through the .pth, is not this one.
    proc = subprocess.run([*PIP, "--python", str(python), "install", "--no-deps", "--no-build-isolation",
                           "--ignore-installed", *args],
                          cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_wheel_installs_in_a_fresh_venv_and_trains_from_another_directory(tmp_path):
    subprocess.run([*PIP, "-q", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("expkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    conf_files = {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert {n.removeprefix("expkit/conf/") for n in names if n.startswith("expkit/conf/")} >= conf_files
    assert any(n.endswith("entry_points.txt") for n in names)

    python = fresh_venv(tmp_path / "venv")
    pip_install(python, str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import expkit; print(expkit.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "venv")), where
    proc = subprocess.run([str(tmp_path / "venv" / "bin" / "expkit"), "train", "+debug=fast", "trainer.progress=off"],
                          cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert list((elsewhere / "runs").rglob("metrics.json"))


def test_editable_install_prints_no_setuptools_warning(tmp_path):
    python = fresh_venv(tmp_path / "venv")
    proc = pip_install(python, "-e", str(ROOT), cwd=tmp_path)
    output = proc.stdout + proc.stderr
    # setuptools says once, for any editable install with a package-dir mapping (conf/ ->
    # expkit.conf), that folders named like the package take precedence: information, not
    # a problem with the project's configuration.
    output = re.sub(r"[^\n]*BuildBackendWarning: Editable installation\.\n(.*\n)*?.*with strategy[^\n]*\n", "", output)
    problems = [line for line in output.splitlines() if re.search(r"warn|deprecat|would be ignored", line, re.I)]
    assert not problems, output
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    conf = subprocess.run([str(python), "-c", "from importlib.resources import files; "
                           "print(files('expkit.conf').joinpath('model', 'python.yaml').read_text())"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert "arch: python" in conf
