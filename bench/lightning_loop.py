"""The plain loop's run (bench/plain_loop.py) trained by a PyTorch Lightning Trainer.

Same data, model, optimizer, seed and batch order; the model is wrapped in a
LightningModule whose training_step is the plain loop's step. Two settings:

- off:      Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False); the module logs nothing
- defaults: Trainer() as it comes (TensorBoard logger, a checkpoint every epoch, TQDM
            progress bar, model summary, sanity check); the module logs train/loss every
            step and val/loss, val/acc every epoch with self.log, as Lightning's docs do

    python bench/lightning_loop.py [--setting off|defaults] [--model mlp] [--size 8192] [--epochs 3]

Lightning is a bench-only extra (pip install expkit[bench]); without it this script and
bench/run.py say so and skip the Lightning column.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import (  # noqa: E402
    Config,
    EpochBatches,
    add_config_arguments,
    config_from,
    make_data,
    make_model,
    make_optimizer,
)

from expkit.training.dist import default_threads  # noqa: E402

MISSING = "lightning not installed: pip install expkit[bench]"
SETTINGS = ("off", "defaults")

try:
    import lightning as L
except ImportError:  # bench-only; the rest of the bench runs without it
    L = None


def available() -> bool:
    return L is not None


if L is not None:

    class Classifier(L.LightningModule):
        def __init__(self, c: Config, log_metrics: bool):
            super().__init__()
            self.c, self.log_metrics = c, log_metrics
            self.model = make_model(c)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.model(x), y)
            if self.log_metrics:
                self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self.model(x)
            if self.log_metrics:
                self.log("val/loss", nn.functional.cross_entropy(logits, y))
                self.log("val/acc", (logits.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return make_optimizer(self.model, self.c)

    class Timer(L.Callback):
        """When each epoch starts, and when its last training step ends."""

        def __init__(self):
            self.timings: dict[str, list[float]] = {"epoch_start": [], "train_end": []}

        def on_train_epoch_start(self, trainer, module):
            self.timings["epoch_start"].append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == trainer.num_training_batches - 1:
                self.timings["train_end"].append(time.perf_counter())


def trainer_kwargs(setting: str, root: str) -> dict:
    if setting == "off":
        return {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                "enable_model_summary": False, "default_root_dir": root}
    if setting == "defaults":
        return {"default_root_dir": root}
    raise ValueError(f"setting {setting!r}: choose {' or '.join(SETTINGS)}")


def train(c: Config, setting: str, root: str) -> tuple[nn.Module, dict]:
    """Train with a Lightning Trainer; returns the plain model (the plain loop's keys) and
    the timings (epoch_start, train_end: time.perf_counter())."""
    if L is None:
        raise RuntimeError(MISSING)
    import logging
    import warnings

    warnings.filterwarnings("ignore", module="lightning")  # e.g. "consider more workers"
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING if setting == "off" else logging.INFO)
    torch.set_num_threads(c.threads or default_threads(1))  # expkit's rule, as the plain loop
    train_x, train_y, val_x, val_y = make_data(c)
    torch.manual_seed(c.seed)
    module = Classifier(c, log_metrics=setting != "off")
    timer = Timer()
    trainer = L.Trainer(max_epochs=c.epochs, accelerator="cpu", devices=1, callbacks=[timer],
                        **trainer_kwargs(setting, root))
    trainer.fit(module, EpochBatches(train_x, train_y, c.batch_size, c.seed, shuffle=True),
                EpochBatches(val_x, val_y, c.batch_size, c.seed, shuffle=False))
    timings = dict(timer.timings, steps_per_epoch=trainer.num_training_batches)
    return module.model, timings


def main(argv: list[str] | None = None) -> int:
    if L is None:
        print(MISSING, file=sys.stderr)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=SETTINGS, default="defaults")
    add_config_arguments(parser)
    parser.add_argument("--root", help="Lightning's default_root_dir (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the timings as one JSON line")
    args = parser.parse_args(argv)
    c = config_from(args)
    with tempfile.TemporaryDirectory() as tmp:
        _, timings = train(c, args.setting, args.root or tmp)
    if args.json:
        print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
