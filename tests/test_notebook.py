"""notebooks/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient): its
Colab set-up does nothing outside Colab, the model and init function defined in the
notebook train, progress shows in the cell while train.log stays plain, TensorBoard
starts inline, and the run resumes in its own folder."""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from pathlib import Path

from conftest import read_json

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        data = out.get("data", {})
        parts += [data.get("text/plain", ""), data.get("text/html", ""), data.get("application/javascript", "")]
    return "".join(p if isinstance(p, str) else "".join(p) for p in parts)


def stop_tensorboards_started_in(folder: Path) -> list[int]:
    """The TensorBoard servers still running that the notebook started (in `folder`), stopped
    by their pid."""
    from tensorboard import manager

    stopped = []
    for info in manager.get_all():
        key = json.loads(base64.b64decode(info.cache_key))
        if Path(key["working_directory"]) == folder:
            try:
                os.kill(info.pid, signal.SIGTERM)
                stopped.append(info.pid)
            except ProcessLookupError:
                pass
    return stopped


def test_quickstart_notebook_runs_in_a_kernel(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    # The kernel finds `tensorboard` (for %tensorboard) next to this Python, as in an activated venv.
    env_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env_path}"
    try:
        NotebookClient(nb, timeout=180, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ["PATH"] = env_path
        stop_tensorboards_started_in(tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup, _, train, tensorboard, resume, evaluate, compare = (text_of(c) for c in code)
    assert f"Colab: False; runs go to {tmp_path / 'runs'}" in setup
    assert "epoch 1/1 batch 8/8" in train and "val/acc" in train  # progress, in the cell
    # The iframe shows once the server answers (a failed launch prints an error instead). The
    # server stops with the kernel (its process group), else in `finally` above.
    assert "<iframe" in tensorboard and "const port = " in tensorboard and "ERROR" not in tensorboard, tensorboard
    assert "after epoch 2" in resume
    assert "test/acc" in evaluate and "with best at step" in evaluate
    assert "optim.lr" in compare and "0.003" in compare

    runs = sorted((p.parent for p in (tmp_path / "runs").rglob("meta.json")), key=lambda p: p.stat().st_mtime)
    assert len(runs) == 2  # the resumed run, and the second run of the comparison
    run_dir = runs[0]
    meta = read_json(run_dir / "meta.json")
    assert meta["status"] == "completed" and len(meta["resumes"]) == 1
    assert meta["imports"]["model.factory"]["path"] == "__main__:SmallNet"
    assert "class SmallNet(nn.Module):" in meta["imports"]["model.factory"]["source"]
    assert "def init_weights(m):" in meta["imports"]["init.function"]["source"]
    log = (run_dir / "train.log").read_text()
    assert "epoch 2/2" in log and "\x1b[" not in log
    assert "in_features=64, out_features=16" in log  # model.kwargs.hidden reached SmallNet
