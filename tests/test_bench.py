"""The benchmarks keep working as expkit changes (a tiny run of each piece, no timings
asserted: speed is measured by `make bench`, not by tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import logging_cost  # noqa: E402
import loop_interleaved  # noqa: E402
import plain_loop  # noqa: E402
from run import run_expkit  # noqa: E402


def test_plain_loop_and_expkit_train_the_same_weights():
    c = plain_loop.Config(model="mlp", shape=(1, 8, 8), size=256, batch_size=64, epochs=2, threads=1)
    plain_model, timings = plain_loop.train(c)
    assert len(timings["epoch_start"]) == 2
    expkit_state, _ = run_expkit(c, ["trainer.num_threads=1"])
    plain_state = plain_model.state_dict()
    assert expkit_state.keys() == plain_state.keys()
    assert all(torch.equal(expkit_state[k], plain_state[k]) for k in plain_state)


@pytest.mark.parametrize("bench", [logging_cost, loop_interleaved], ids=["logging_cost", "loop_interleaved"])
def test_interleaved_benchmarks_time_both_contenders_on_the_same_steps(bench):
    c = plain_loop.Config(model="mlp", shape=(1, 8, 8), size=256, batch_size=64, epochs=1000)
    res = bench.measure(c, rounds=2)
    assert res["steps"] == 4 and all(len(v) == 2 for v in res["seconds"].values())
    assert all(r > 0 for kind in ("wall", "cpu") for r in res["ratios"][kind])
    assert "| wall time |" in "\n".join(bench.table(res))
