"""The loop's switches through real `expkit` processes: a profile trace in the run folder,
and a resumed run with EMA and accumulation that ends bitwise where an uninterrupted one does."""

from __future__ import annotations

import json

import torch
from conftest import only_run, run_cli, run_dirs

import expkit
from expkit.run import checkpoint
from expkit.run.folder import RunDir

SMALL = ["model=mlp", "model.width=32", "data.sample=128", "data.batch_size=8", "trainer.progress=off",
         "trainer.graph=false"]


def test_profile_writes_a_trace_and_logs_the_top_operators(tmp_path):
    run_cli(["train", *SMALL, "trainer.epochs=1", "trainer.profile=3"], cwd=tmp_path, check=True)
    run = RunDir(only_run(tmp_path))
    trace = json.loads(run.profile_trace.read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"aten::addmm", "Optimizer.step#AdamW.step"} & names and "ProfilerStep#4" in names  # after 4 warm-up
    log = run.log.read_text()
    assert "profile: 3 steps traced into" in log and "top 15 operators by self time" in log
    assert "Self CPU time total" in log


def last(run) -> checkpoint.Checkpoint:
    return checkpoint.load_file(checkpoint.named_file(RunDir(run).checkpoints, checkpoint.LAST))


def test_a_resumed_run_with_ema_and_accumulation_ends_bitwise_and_load_returns_the_average(tmp_path):
    keys = [*SMALL, "trainer.ema=0.9", "trainer.accumulate=3"]
    run_cli(["train", *keys, "trainer.epochs=2"], cwd=tmp_path, check=True)
    run_cli(["train", *keys, "trainer.epochs=1"], cwd=tmp_path, check=True)
    whole, part = run_dirs(tmp_path)
    run_cli(["resume", str(part), "trainer.epochs=2"], cwd=tmp_path, check=True)
    a, b = last(whole), last(part)
    assert a.step == b.step == 12  # 6 optimizer steps an epoch, each of up to 3 micro-batches
    for saved in ("model", "ema"):
        for k, v in getattr(a, saved).items():
            assert torch.equal(getattr(b, saved)[k], v), (saved, k)
    assert not all(torch.equal(a.ema[k], v) for k, v in a.model.items())
    metrics = json.loads(RunDir(whole).metrics.read_text())
    assert {"val/acc", "raw/val/acc", "raw/val/loss", "test/acc"} <= set(metrics)
    model, _ = expkit.load(whole, checkpoint="last")
    assert all(torch.equal(v, a.ema[k]) for k, v in model.state_dict().items())
