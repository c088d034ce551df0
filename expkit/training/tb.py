"""TensorBoard on rank 0; a no-op writer elsewhere, so the loop never asks whether
logging is on. Events go straight into the run folder, so `tensorboard --logdir runs`
shows each run once, HPARAMS included (written into the same event file, not a
timestamped subfolder as SummaryWriter.add_hparams would)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

# Writer.graph's traces in this process: (model class, printed module tree, input) -> graph.
TRACED_GRAPHS: dict[tuple, Any] = {}


class NullWriter:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def use_fast_crc() -> None:
    """Give TensorBoard's event writer a CRC-32C in C. TensorBoard checksums every event
    record with a pure-Python loop (about 0.16 us a byte here) on the writer thread, which
    holds the GIL while the training loop waits for it; google-crc32c gives the same value
    about a hundred times faster. The files are byte for byte the same. Kept as it is when
    google-crc32c is missing or only has its pure-Python fallback."""
    import warnings

    from tensorboard.summary.writer import record_writer

    if getattr(record_writer.masked_crc32c, "expkit_fast", False):
        return
    try:
        with warnings.catch_warnings():  # its warning that the C code is missing: handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            import google_crc32c
    except ImportError:
        return
    if google_crc32c.implementation != "c":
        return

    def masked_crc32c(data: bytes) -> int:  # TFRecord's masking of the CRC, as in tensorboard's stub
        crc = google_crc32c.value(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    masked_crc32c.expkit_fast = True
    record_writer.masked_crc32c = masked_crc32c


class Writer:
    """Scalars are kept in a list and handed to SummaryWriter's event file in batches (every
    SCALAR_BATCH of them, every SCALAR_BATCH_S seconds, and at flush/close), with the wall
    time of the call. Each hand-over wakes the writer thread, which is too dear to do once
    per training step for a small model (bench/README.md has the figures).
    Consecutive scalars of one step, called within a second of each other, go into one event
    (a log step's ~10 values: loss, accuracy, gradient and weight norms): the writer thread
    holds the GIL while it serializes and checksums each record, so fewer, larger records cost
    the training loop less (`use_fast_crc` makes the checksums cheap too). TensorBoard reads
    the same values, steps and (to within that second) wall times as if each had its own
    event."""

    SCALAR_BATCH = 256
    SCALAR_BATCH_S = 5.0

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        use_fast_crc()
        # purge_step: on resume, TensorBoard hides events at or after this step that the
        # interrupted run wrote after its checkpoint, so curves have no duplicated steps.
        # max_queue: room for a whole batch of scalars without waiting for the writer thread.
        self.w = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=30, max_queue=2 * self.SCALAR_BATCH)
        self.pending: list[tuple[str, float, int, float]] = []
        self.handed_over = time.time()

    def scalar(self, tag: str, value: float, step: int) -> None:
        now = time.time()
        self.pending.append((tag, float(value), step, now))
        if len(self.pending) >= self.SCALAR_BATCH or now - self.handed_over >= self.SCALAR_BATCH_S:
            self.hand_over()

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def hand_over(self) -> None:
        pending, self.pending = self.pending, []
        self.handed_over = time.time()
        if not pending:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        groups: list[tuple[int, float, list]] = []  # (step, wall time of its first scalar, values)
        for tag, value, step, wall_time in pending:
            if not groups or groups[-1][0] != step or wall_time - groups[-1][1] > 1.0:
                groups.append((step, wall_time, []))
            groups[-1][2].append(Summary.Value(tag=tag, simple_value=value))
        events = self.w._get_file_writer()
        for step, wall_time, values in groups:
            events.add_summary(Summary(value=values), step, wall_time)

    def histogram(self, tag: str, values, step: int) -> None:
        self.w.add_histogram(tag, values, step)

    def images(self, tag: str, grid, step: int) -> None:
        self.w.add_image(tag, grid, step)

    def png(self, tag: str, data: bytes, step: int) -> None:
        """An image already encoded as PNG (a matplotlib figure), written as it is."""
        import struct

        from tensorboard.compat.proto.summary_pb2 import Summary

        width, height = struct.unpack(">II", data[16:24])  # the PNG header's IHDR chunk
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=data)
        self.w._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        # Markdown: indent by four spaces so YAML and tables keep their layout.
        self.w.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def graph(self, model, example) -> None:
        from torch.utils.tensorboard._pytorch_graph import graph as trace

        # A sweep's jobs mostly train the same architecture: trace it once per process (a
        # trace costs a tenth of a second or more). The key is the module tree as printed,
        # which names every layer and its shape, and the input's shape and type.
        key = (type(model), repr(model), tuple(example.shape), str(example.dtype), str(example.device))
        if key not in TRACED_GRAPHS:
            TRACED_GRAPHS[key] = trace(model, example)
        self.w._get_file_writer().add_graph(TRACED_GRAPHS[key])

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        exp, ssi, sei = hparams_summary(clean, metrics)
        writer = self.w._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        for tag, value in metrics.items():
            self.w.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.hand_over()
        self.w.flush()

    def close(self) -> None:
        self.hand_over()
        self.w.close()


def make_writer(run_dir: Path, main: bool, purge_step: int | None = None):
    return Writer(run_dir, purge_step) if main else NullWriter()


# ------------------------------------------------------------ what the loop writes once
def _denormalize(x, mean, std):
    import torch

    shape = (1, -1, 1, 1)
    return (x * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)).clamp(0, 1)


def preview(loader, n: int = 64):
    """The first n examples of a split, without augmentation and without touching the
    RNG (so a run with and without TensorBoard images trains identically)."""
    import torch

    if hasattr(loader, "x"):
        return loader.x[:n].float().cpu(), loader.y[:n].cpu()
    dataset = loader.preview_dataset if hasattr(loader, "preview_dataset") else loader.loader.dataset
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def make_grid(x, nrow: int = 8, padding: int = 2):
    """torchvision.utils.make_grid's picture of a batch (N, C, H, W): rows of nrow images,
    `padding` black pixels around each, 1-channel images as gray RGB. Written out here
    because importing torchvision costs about as much start-up as importing torch."""
    import torch

    if x.size(1) == 1:
        x = torch.cat((x, x, x), 1)
    if x.size(0) == 1:
        return x.squeeze(0)
    n, channels = x.size(0), x.size(1)
    cols, rows = min(nrow, n), -(-n // min(nrow, n))
    height, width = x.size(2) + padding, x.size(3) + padding
    grid = x.new_zeros((channels, height * rows + padding, width * cols + padding))
    for k in range(n):
        row, col = divmod(k, cols)
        grid[:, row * height + padding:(row + 1) * height, col * width + padding:(col + 1) * width] = x[k]
    return grid


def write_data_grids(writer, data) -> None:
    """Image grids of a training and a validation batch: see that the data is what you think."""
    if len(data.input_shape) != 3:
        return
    for split, loader in (("train", data.train), ("val", data.val)):
        x, _ = preview(loader)
        writer.images(f"data/{split}", make_grid(_denormalize(x, data.mean, data.std), nrow=8), 0)


def write_graph(writer, model, data, device) -> None:
    import logging
    import warnings

    x, _ = preview(data.train, 2)
    was_training = model.training
    model.eval()  # tracing in train mode would update batchnorm statistics
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            writer.graph(model, x.to(device))
    except Exception as e:  # some models do not trace; the graph is a nicety
        logging.getLogger("expkit").warning("model graph not written to TensorBoard: %s", e)
    finally:
        model.train(was_training)


def write_misclassified(writer, errors, data, step: int) -> None:
    if not errors:
        return
    import torch

    x = torch.stack([e[0] for e in errors])
    writer.images("val/misclassified", make_grid(_denormalize(x, data.mean, data.std), nrow=8), step)
    labels = "\n".join(f"{i}: true {data.classes[t]}, predicted {data.classes[p]}"
                       for i, (_, t, p) in enumerate(errors))
    writer.text("val/misclassified", labels, step)
