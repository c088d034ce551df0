"""What TensorBoard's event checksums cost: its pure-Python CRC-32C against google-crc32c's.

    .venv/bin/python bench/event_crc.py [--rounds 6] [--out FILE]

TensorBoard's event writer checksums every record with a pure-Python CRC-32C, on its writer
thread and holding the GIL. expkit's writer swaps in google-crc32c
(expkit/training/tb.py, `use_fast_crc`). Here the same events are written with each, taking
turns A B A B: 16 histograms of the mlp's four weight matrices (what
`trainer.histogram_every` writes, weights and gradients, for two epochs), an image grid of
64 28x28 examples and 100 log steps of 10 scalars each. Timed from the first event to the
writer's close (which waits for the writer thread), on wall and process CPU time; both
write the same number of bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from logging_cost import emit  # noqa: E402


def write_events(folder: Path, crc) -> tuple[float, float, int]:
    """(wall s, CPU s, bytes written) of one epoch's worth of events, checksummed by `crc`."""
    import torch
    from tensorboard.summary.writer import record_writer

    from expkit.training.tb import Writer

    torch.manual_seed(0)
    tensors = [torch.randn(256, 784), torch.randn(256, 256), torch.randn(256, 256), torch.randn(10, 256)] * 4
    grid = torch.rand(3, 242, 242)  # make_grid of 64 28x28 examples, 8 a row
    writer = Writer(folder)
    record_writer.masked_crc32c = crc  # after Writer(), which installs the fast one
    start, start_cpu = time.perf_counter(), time.process_time()
    for i, t in enumerate(tensors):
        writer.histogram(f"weights/{i}", t, 1)
    writer.images("inputs", grid, 1)
    for step in range(100):
        writer.scalars({f"grad/norm/{k}": 1.0 + step for k in range(10)}, step)
    writer.close()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return wall, cpu, sum(p.stat().st_size for p in folder.glob("events.out.tfevents.*"))


def measure(rounds: int) -> dict:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure_python
    from tensorboard.summary.writer import record_writer

    from expkit.training.tb import use_fast_crc

    use_fast_crc()
    fast = record_writer.masked_crc32c
    if not getattr(fast, "expkit_fast", False):
        raise SystemExit("google-crc32c's C code is not installed: nothing to compare")
    contenders = {"pure-Python (TensorBoard's)": pure_python, "google-crc32c": fast}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    sizes = set()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds + 1):  # round 0 warms up
                for name, crc in contenders.items():
                    wall, cpu, size = write_events(Path(tmp) / f"{r}-{len(times[name])}-{name[:4]}", crc)
                    sizes.add(size)
                    if r:
                        times[name].append((wall, cpu))
    finally:
        record_writer.masked_crc32c = fast
    return {"rounds": rounds, "times": times, "bytes": sizes.pop() if len(sizes) == 1 else None}


def table(res: dict) -> list[str]:
    lines = [
        f"Event checksums ({res['rounds']} rounds A B; {res['bytes'] or 'differing'} bytes of events: 16 histograms, "
        "one image grid, 100 log steps of 10 scalars), median ms from the first event to close:",
        "",
        "| CRC-32C | wall ms | CPU ms (all threads) |",
        "| --- | ---: | ---: |",
    ]
    for name, t in res["times"].items():
        lines.append(f"| {name} | {1000 * statistics.median(w for w, _ in t):.1f} | "
                     f"{1000 * statistics.median(c for _, c in t):.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", help="also write the result (markdown) here")
    args = parser.parse_args(argv)
    emit(table(measure(args.rounds)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
