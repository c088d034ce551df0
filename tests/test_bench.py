"""The benchmarks keep working as expkit changes (a tiny run of each piece, no timings
asserted: speed is measured by `make bench`, not by tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import checkpoint_interleaved  # noqa: E402
import event_crc  # noqa: E402
import logging_cost  # noqa: E402
import loop_interleaved  # noqa: E402
import loop_pieces  # noqa: E402
import loop_switches  # noqa: E402
import plain_loop  # noqa: E402
import scaling  # noqa: E402
import step_profile  # noqa: E402
import step_profile_in_place  # noqa: E402
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


TINY = plain_loop.Config(model="mlp", shape=(1, 8, 8), size=256, batch_size=64, epochs=1000)


def test_loop_bench_splits_its_rounds_over_contenders_built_anew(monkeypatch):
    built = []
    real = loop_interleaved.build_contenders

    def recording(*args, **kwargs):
        epochs, close, steps = real(*args, **kwargs)
        built.append({name: getattr(epoch, "__self__", epoch) for name, epoch in epochs.items()})
        return epochs, close, steps

    monkeypatch.setattr(loop_interleaved, "build_contenders", recording)
    res = loop_interleaved.measure(TINY, rounds=5, instances=1, placements=2)
    assert res["rounds_per_placement"] == [3, 2]
    assert all(len(v) == 5 for v in res["seconds"].values()) and len(res["ratios"]["wall"]) == 5
    assert len(built) == 2 and built[0].keys() == built[1].keys()
    assert all(built[0][name] is not built[1][name] for name in built[0])  # new instances, not reused
    assert len(loop_interleaved.per_placement(res, res["ratios"]["wall"])) == 2
    assert "over 2 placements" in "\n".join(loop_interleaved.table(res))


def test_loop_bench_in_microseconds_builds_both_loops_narrow(tmp_path):
    narrow = replace(TINY, width=8, depth=1)
    assert "model.width=8" in narrow.expkit_overrides() and "model.width" not in " ".join(TINY.expkit_overrides())
    trainer = logging_cost.build_trainer(narrow, [], tmp_path / "run")
    shapes = [p.shape for p in trainer.raw_model.parameters()]
    assert shapes == [p.shape for p in plain_loop.make_model(narrow).parameters()] and (8, 64) in shapes
    trainer.writer.close()
    res = loop_interleaved.measure(narrow, rounds=2, instances=1, placements=1)
    added = loop_interleaved.added_us(res)
    steps = res["steps"]
    assert added == pytest.approx([1e6 * (a - b) / steps for a, b in
                                   zip(res["seconds"]["expkit"], res["seconds"]["plain"], strict=True)])
    text = "\n".join(loop_interleaved.table(res))
    assert "Loop, mlp, 1 hidden layer of 8 on 1x8x8" in text and "| expkit at defaults | " in text


def test_pieces_bench_takes_each_piece_away(tmp_path):
    trainer = logging_cost.build_trainer(TINY, [], tmp_path / "run")
    loop_pieces.untallied(trainer)
    trainer.train_epoch(0)
    assert trainer.tally.count == 0 and "train/loss" not in trainer.last_metrics  # nothing was kept
    trainer.writer.close()
    trainer = logging_cost.build_trainer(TINY, [], tmp_path / "no-norms")
    loop_pieces.without_norms(trainer)
    trainer.train_epoch(0)
    assert "train/loss" in trainer.last_metrics and trainer.grad_history == []  # no log step took a norm
    trainer.writer.close()
    res = loop_pieces.measure(TINY, rounds=2, placements=2)
    assert set(res["added_us"]) == set(loop_pieces.SETTINGS) and all(len(v) == 2 for v in res["added_us"].values())
    assert "| no train/* tally | " in "\n".join(loop_pieces.table(res))


def test_switch_bench_builds_its_trainers_anew_for_each_placement():
    res = loop_switches.measure(replace(TINY, size=512), rounds=3, placements=2)
    assert res["placements"] == 2 and all(len(v) == 3 for v in res["seconds"].values())
    assert set(res["ratios"]) == {"ema", "accumulate 4", "profile done"}
    assert res["syncs"]["per_log_step"] == 1 and res["syncs"]["between_log_steps"] == 0
    assert "over 2 placements" in "\n".join(loop_switches.table(res))


def test_step_profile_names_every_piece_of_the_loop():
    res = step_profile.measure(TINY)
    assert res["plain_us"] > 0 and len(res["pieces"]) >= 8
    text = "\n".join(step_profile.table(res))
    assert "tally" in text and "log step" in text and "sum: expkit's own work per step" in text


def test_step_profile_in_place_times_the_pieces_where_they_run():
    res = step_profile_in_place.measure(TINY, rounds=2, instances=1)
    e = res["expkit"]
    # Every piece ran inside the timed epochs: 4 steps, with a log step at the last one.
    assert all(e[key] > 0 for key, _ in step_profile_in_place.EXPKIT_PIECES)
    assert e["to_host"] + e["grad_norms"] <= e["log_train"] < e["epoch"]
    assert res["plain"]["data"] > 0 and res["plain"]["train_step"] > 0
    assert "of which the gradient and weight norms" in "\n".join(step_profile_in_place.table(res))


def test_checkpoint_bench_writes_checkpoints_only_where_asked(tmp_path):
    res = checkpoint_interleaved.measure(TINY, rounds=2)
    assert set(res["seconds"]) == {"no checkpoints", "in line", "background"} and res["checkpoint_mb"] > 0
    assert res["threads"] == torch.get_num_threads()
    assert "| background |" in "\n".join(checkpoint_interleaved.table(res))


def test_checkpoint_bench_on_one_thread_runs_as_a_command_of_its_own(tmp_path):
    from run import bench_checkpoint_spare_core

    res = bench_checkpoint_spare_core(plain_loop.Config(model="mlp", size=256, batch_size=64), 2, tmp_path)
    assert res["threads"] == 1 and res["config"].size == 256 and len(res["seconds"]["background"]) == 2
    assert "1 torch thread on" in "\n".join(checkpoint_interleaved.table(res))


def test_scaling_bench_reads_time_and_memory_of_a_whole_run():
    res = scaling.measure([256], [1])
    [cell] = res["cells"]
    assert cell["train"] == 256 and cell["us_per_example"] > 0 and cell["ms_per_step"] > 0
    assert "| 256 | 1 |" in "\n".join(scaling.table(res))


def test_ddp_interleaved_bench_runs_under_torchrun(tmp_path):
    out = tmp_path / "ddp.json"
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
                           str(BENCH / "ddp_interleaved.py"), "--rounds", "2", "--size", "512", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["world"] == 2 and res["steps"] == 2 and len(res["seconds"]["expkit"]) == 2


def test_make_bench_rewrites_only_the_marked_summary_of_bench_readme():
    from run import LATEST_BEGIN, LATEST_END, with_latest

    readme = (BENCH / "README.md").read_text()
    assert readme.count(LATEST_BEGIN) == 1 and readme.count(LATEST_END) == 1
    new = with_latest(readme, ["| a | table |"])
    before, after = readme.split(LATEST_BEGIN)[0], readme.split(LATEST_END)[1]
    assert new.startswith(before) and new.endswith(after) and "| a | table |" in new
    assert with_latest(new, ["| a | table |"]) == new


def test_event_crc_bench_times_both_checksums_on_the_same_events():
    res = event_crc.measure(rounds=1)
    assert res["bytes"] and set(res["times"]) == {"pure-Python (TensorBoard's)", "google-crc32c"}
    assert "| google-crc32c |" in "\n".join(event_crc.table(res))
