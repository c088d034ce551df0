"""Packaging, tried as users install it: the wheel holds every module of the source tree and
conf/, and installed non-editable into a fresh virtual environment it runs every command
from a project folder elsewhere; `pip install -e .` prints no setuptools warning.

The fresh environments get this environment's site-packages for the dependencies (a plain
path in a .pth file), so torch is not installed again; expkit itself goes in with
--no-deps. A plain path line does not run that folder's .pth files, so the editable expkit
of this environment (its finder) cannot serve a module the wheel lacks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import FAST, git, make_git_repo

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
# The tests build in the repository (build/, *.egg-info): one pytest-xdist worker runs them.
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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([*PIP, "-q", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, cwd=dist)
    return next(dist.glob("expkit-*.whl"))


def source_files() -> set[str]:
    """What the wheel must hold: every module under expkit/, every file of conf/ (as expkit/conf/)."""
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "expkit").rglob("*.py")}
    conf = {"expkit/conf/" + str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*")
            if p.is_file() and p.suffix in (".py", ".yaml")}
    return modules | conf


def test_the_wheel_holds_every_module_and_config_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_files() - names)
    assert not missing, f"the wheel lacks {missing}"
    assert any(n.endswith("entry_points.txt") for n in names)
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "expkit" / "version.py").read_text())[1]
    assert wheel.name.startswith(f"expkit-{version}-"), wheel.name


def test_the_installed_wheel_runs_every_command_from_another_project(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, str(wheel), cwd=tmp_path)
    bin_dir = tmp_path / "venv" / "bin"
    project = make_git_repo(tmp_path / "project")  # a user's project: its own git, no expkit source
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EXPKIT_TRACEBACK")}

    def expkit(*args: str) -> str:
        proc = subprocess.run([str(bin_dir / "expkit"), *args], cwd=project, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"expkit {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    where = subprocess.run([str(python), "-c", "import expkit, expkit.afterwards; print(expkit.__file__)"],
                           cwd=project, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "venv")), where

    expkit("train", *FAST, "name=one")
    expkit("train", "-m", *FAST, "optim.lr=1e-3,3e-3")
    runs = json.loads(expkit("runs", "--json"))
    assert len(runs) == 3 and {r["status"] for r in runs} == {"completed"}, runs
    one = next(Path(r["path"]) for r in runs if "one" in r["path"])
    one = one if one.is_absolute() else project / one
    sweep = next(p for p in (project / "runs" / "multirun").glob("*/*") if (p / "summary.md").exists())
    jobs = sorted(p for p in sweep.iterdir() if (p / "meta.json").exists())

    expkit("resume", str(one), "trainer.epochs=2")
    assert json.loads((one / "metrics.json").read_text())["epoch"] == 2
    assert "test" in expkit("eval", str(one))
    from PIL import Image

    Image.new("L", (8, 8), color=128).save(project / "digit.png")
    assert "digit.png" in expkit("predict", str(one), str(project / "digit.png"))
    expkit("export", str(one))
    assert list((one / "export").iterdir())
    assert "optim.lr" in expkit("compare", str(jobs[0]), str(jobs[1]))
    expkit("summary", str(sweep))
    expkit("report", str(sweep), "--out", str(tmp_path / "report"))
    expkit("sched", "sched=cosine", "--out", str(tmp_path / "lr.png"))
    assert "model" in expkit("list")
    assert "dropout" in expkit("lesson", "--list")
    git(project, "add", "digit.png")
    git(project, "commit", "-qm", "an image")
    assert "reproduces" in expkit("reproduce", str(jobs[0]))
    load = ("import expkit, sys; model, cfg = expkit.load(sys.argv[1]); "
            "print(model.training, sum(p.numel() for p in model.parameters()) > 0, cfg.model.arch)")
    loaded = subprocess.run([str(python), "-c", load, str(one)],
                            cwd=project, env=env, capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["False", "True", "cnn"], loaded.stdout


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
