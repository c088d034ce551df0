"""What one checkpoint costs, relative to one epoch of the default run.

    .venv/bin/python bench/checkpoint_cost.py [OVERRIDES...] [--repeats N]

Builds the default experiment (`expkit train` with no overrides: digits, cnn, adamw) or
the one the overrides describe, in a temporary run folder; times the second training
epoch (the first warms up) with and without its evaluation, then N checkpoint writes
(as the trainer does them: state_dict -> torch.save -> checksum -> temporary file ->
fsync -> rename -> fsync the folder -> links -> retention), reporting the median and the
part of it spent serializing. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    import torch
    from hydra import compose, initialize_config_module

    from expkit.config.compose import task_config
    from expkit.config.schema import validate
    from expkit.run import checkpoint
    from expkit.training.build import build
    from expkit.training.logs import close_logging, setup_logging

    with initialize_config_module("expkit.conf", version_base="1.3"):
        cfg = task_config(compose("config", overrides=["trainer.progress=off", *args.overrides]))
    typed = validate(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        setup_logging(run_dir)
        trainer = build(typed, run_dir, None)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        trainer.train_epoch(0)  # warm-up
        sync()
        started = time.perf_counter()
        trainer.train_epoch(1)
        sync()
        train_s = time.perf_counter() - started
        trainer.epoch = 2
        started = time.perf_counter()
        trainer.evaluate_and_record(2)
        sync()
        eval_s = time.perf_counter() - started

        save_s, serialize_s = [], []
        for i in range(args.repeats):
            trainer.step += 1  # a new numbered file each time, as in training
            started = time.perf_counter()
            trainer.save_checkpoint(best=i % 2 == 0, wait=True)  # in line: the whole write is timed
            save_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            checkpoint.to_bytes(trainer.checkpoint_state())  # as the trainer serializes it
            serialize_s.append(time.perf_counter() - started)
        size = (run_dir / "checkpoints" / "last.pt").stat().st_size
        trainer.writer.close()
        close_logging()

    save = statistics.median(save_s)
    result = {
        "config": " ".join(args.overrides) or "defaults (digits, cnn, adamw)",
        "device": str(trainer.device), "threads": torch.get_num_threads(),
        "steps_per_epoch": len(trainer.data.train), "checkpoint_mb": round(size / 1e6, 3),
        "epoch_train_s": round(train_s, 4), "epoch_eval_s": round(eval_s, 4),
        "checkpoint_s_median": round(save, 4), "checkpoint_s_max": round(max(save_s), 4),
        "serialize_s_median": round(statistics.median(serialize_s), 4),
        "checkpoint_per_epoch": round(save / (train_s + eval_s), 4),
        "checkpoint_per_train_epoch": round(save / train_s, 4),
    }
    print(f"one epoch: {train_s:.3f} s training + {eval_s:.3f} s evaluation ({result['steps_per_epoch']} steps); "
          f"one checkpoint ({result['checkpoint_mb']} MB): {save * 1000:.1f} ms median, "
          f"{max(save_s) * 1000:.1f} ms max, of which serializing {result['serialize_s_median'] * 1000:.1f} ms; "
          f"= {100 * result['checkpoint_per_epoch']:.2f}% of an epoch", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
