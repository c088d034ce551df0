"""bench/gpu_check.py (`make gpu-check`) on a machine without a GPU: it says so, runs the
CPU-runnable parts, exits 0 and leaves bench/results/gpu.md alone. tests/test_gpu.py holds
the GPU checks themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def test_without_a_gpu_it_says_so_runs_the_cpu_parts_and_exits_0(tmp_path):
    real = ROOT / "bench" / "results" / "gpu.md"
    before = real.read_bytes() if real.exists() else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPKIT_")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, even on a GPU machine
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--quick", "--results-dir",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no GPU: torch.cuda.is_available() is false" in proc.stdout
    assert not (tmp_path / "gpu.md").exists()
    assert (real.read_bytes() if real.exists() else None) == before
    text = (tmp_path / "gpu_cpu_dryrun.md").read_text()
    assert "These figures say nothing about a GPU" in text and "GPU: none" in text
    rows = [line for line in text.splitlines() if line.startswith("| test_gpu::")]
    assert len(rows) >= 10 and all("| SKIPPED | no CUDA GPU" in row for row in rows), rows
    assert "| expkit / plain loop steps/s (fp32) | SKIPPED |" in text  # the target is judged on a GPU only
    assert "| bf16 / fp32 speed-up | PASS |" in text and ", 0 failed," in text
    assert "| loop: host syncs per step (1 on a log step, 0 between) | PASS |" in text


def test_junit_results_become_checks(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text("""<?xml version="1.0"?><testsuites><testsuite>
<testcase classname="tests.test_gpu" name="test_a" time="1.5"/>
<testcase classname="tests.test_gpu" name="test_b" time="2">
  <failure message="assert 1 == 2&#10;more">x</failure></testcase>
<testcase classname="tests.test_gpu" name="test_c" time="0"><skipped message="no CUDA GPU"/></testcase>
<testcase classname="tests.test_gpu" name="test_d" time="0"><error message="fixture broke">y</error></testcase>
</testsuite></testsuites>""")
    checks = gpu_check.parse_junit(xml)
    assert [(c.name, c.status) for c in checks] == [
        ("test_gpu::test_a", "PASS"), ("test_gpu::test_b", "FAIL"), ("test_gpu::test_c", "SKIPPED"),
        ("test_gpu::test_d", "FAIL")]
    assert checks[0].figure == "1.5 s" and checks[1].figure == "2.0 s: assert 1 == 2"
    assert checks[2].figure == "no CUDA GPU"
    text = gpu_check.report(True, ["- GPU: X"], checks, [], 3.0)
    assert text.startswith("# expkit on a GPU") and "1 passed, 2 failed, 1 skipped" in text
    assert "| test_gpu::test_b | FAIL | 2.0 s: assert 1 == 2 |" in text
