"""A hand-written PyTorch training loop, the baseline expkit is measured against.

It trains what `expkit train data=synthetic model=mlp data.size=N trainer.epochs=E` trains
(see EXPKIT_OVERRIDES) with nothing but torch: the same synthetic data (same generator,
split and normalization), the same model (784 -> 3 x [Linear, BatchNorm, ReLU, Dropout 0.2]
-> 10, or expkit's default CNN with --model cnn), AdamW with weight decay on weights only,
the same seed and the same batch order, and an evaluation after every epoch. Its final
weights equal expkit's bit for bit (bench/run.py checks), so the two do the same work.

    python bench/plain_loop.py [--model mlp|cnn] [--size 8192] [--epochs 3] [--save PATH]
                               [--expkit-collector]

--expkit-collector treats Python's garbage collector as the `expkit` command does
(expkit/collector.py): paused from the start (before torch's import) until the training
loop, then what exists is frozen out of later collections, and no collection at the exit.

Used as a module by bench/run.py and bench/lightning_loop.py (make_data, make_model,
make_optimizer, EpochBatches, PlainLoop, train). Imports nothing but torch.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace

if __name__ == "__main__" and "--expkit-collector" in sys.argv:
    gc.disable()  # before the imports, as `expkit train` pauses it (expkit/collector.py)

import torch
from torch import nn

from expkit.training.dist import default_threads


@dataclass
class Config:
    model: str = "mlp"  # mlp or cnn, each at expkit's defaults (conf/model/*.yaml, conf/reg/default.yaml)
    width: int = 256  # the mlp's hidden units (model.width)
    depth: int = 3  # the mlp's hidden layers (model.depth)
    size: int = 8192  # training examples (data.size); validation is val_fraction of the total on top
    shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10
    batch_size: int = 128
    val_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.01
    threads: int = 0  # 0: as expkit chooses (expkit.dist.default_threads)

    def resized_mlp(self) -> bool:
        """An mlp whose layers are not expkit's default ones."""
        return self.model == "mlp" and (self.width, self.depth) != (Config.width, Config.depth)

    def label(self) -> str:
        """The model as the bench tables name it: mlp or cnn, and a resized mlp's layers."""
        if self.resized_mlp():
            return f"mlp, {self.depth} hidden layer{'s' * (self.depth > 1)} of {self.width}"
        return self.model

    def expkit_overrides(self) -> list[str]:
        """The `expkit train` overrides for the same run."""
        model = [f"model.width={self.width}", f"model.depth={self.depth}"] if self.resized_mlp() else []
        return ["data=synthetic", f"model={self.model}", *model, f"data.size={self.size}",
                f"data.shape=[{','.join(map(str, self.shape))}]", f"data.num_classes={self.num_classes}",
                f"data.batch_size={self.batch_size}", f"seed={self.seed}", f"trainer.epochs={self.epochs}"]


# ---------------------------------------------------------------------------- data
def make_data(c: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, val_x, val_y): expkit's synthetic data set, split and normalized."""
    def val_count(n: int) -> int:
        return 0 if c.val_fraction <= 0 or n <= 1 else min(n - 1, max(1, round(n * c.val_fraction)))

    total = max(1, c.size + round(c.size * c.val_fraction / max(1e-9, 1 - c.val_fraction)))
    while total - val_count(total) < c.size:
        total += 1
    while total - val_count(total) > c.size:
        total -= 1
    while total + 1 - val_count(total + 1) == c.size:
        total += 1
    g = torch.Generator().manual_seed(c.split_seed + 1234)
    means = torch.rand((c.num_classes, *c.shape), generator=g)
    y = torch.randint(0, c.num_classes, (total,), generator=g)
    x = (0.5 * means[y] + 0.5 * torch.rand((total, *c.shape), generator=g)).clamp_(0, 1)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(c.split_seed))
    n_val = val_count(total)
    train_idx, val_idx = order[n_val:], order[:n_val]
    # Per-channel statistics of the training split (population std), as Python floats.
    dims = [0] + list(range(2, x.ndim))
    mean = x[train_idx].mean(dim=dims).tolist()
    std = x[train_idx].std(dim=dims, correction=0).clamp_min(1e-6).tolist()
    view = (1, -1) + (1,) * (x.ndim - 2)

    def normalize(t: torch.Tensor) -> torch.Tensor:
        return (t - torch.tensor(mean).view(view)) / torch.tensor(std).view(view)

    return normalize(x[train_idx]), y[train_idx], normalize(x[val_idx]), y[val_idx]


class EpochBatches:
    """Batches by indexing in-memory tensors; a new shuffled order every epoch, seeded by
    (seed, epoch). `set_epoch` is what Lightning calls on a loader's sampler."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, shuffle: bool):
        self.x, self.y, self.batch_size, self.seed, self.shuffle = x, y, batch_size, seed, shuffle
        self.epoch = 0
        # What Lightning looks for on a loader: sampler.set_epoch (called every epoch), batch_sampler.
        self.sampler, self.batch_sampler = self, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(len(self.y), generator=g)
        else:
            order = torch.arange(len(self.y))
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)


# --------------------------------------------------------------------------- model
def make_model(c: Config) -> nn.Module:
    """expkit's mlp or cnn at their defaults, built in the same order (same initial weights)."""
    def act() -> nn.Module:
        return nn.ReLU(inplace=True)

    if c.model == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        features = math.prod(c.shape)
        for _ in range(c.depth):
            layers += [nn.Linear(features, c.width, bias=False), nn.BatchNorm1d(c.width), act(), nn.Dropout(0.2)]
            features = c.width
        return nn.Sequential(*layers, nn.Linear(features, c.num_classes))
    if c.model == "cnn":
        channels, h, w = c.shape
        layers = []
        for c_out in (32, 64):
            for _ in range(2):
                layers += [nn.Conv2d(channels, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), act()]
                channels = c_out
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        layers += [nn.Flatten(), nn.Dropout(0.2), nn.Linear(channels * h * w, 128, bias=False),
                   nn.BatchNorm1d(128), act(), nn.Dropout(0.2), nn.Linear(128, c.num_classes)]
        return nn.Sequential(*layers)
    raise ValueError(f"--model: {c.model!r} is not mlp or cnn")


def make_optimizer(model: nn.Module, c: Config) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and kernels only (not on biases and norm parameters)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=c.lr)


# ---------------------------------------------------------------------------- loop
@torch.no_grad()
def evaluate(model: nn.Module, batches: EpochBatches) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    model.train()
    return loss_sum / count, correct / count


class PlainLoop:
    """The loop's state (data, model, optimizer, batches), built in the order that gives
    expkit's initial weights; `train_epoch` runs one epoch's training steps."""

    def __init__(self, c: Config):
        torch.set_num_threads(c.threads or default_threads(1))  # expkit's rule: OMP_NUM_THREADS, else usable cores
        train_x, train_y, val_x, val_y = make_data(c)
        torch.manual_seed(c.seed)
        self.model = make_model(c)
        self.optimizer = make_optimizer(self.model, c)
        self.train_batches = EpochBatches(train_x, train_y, c.batch_size, c.seed, shuffle=True)
        self.val_batches = EpochBatches(val_x, val_y, c.batch_size, c.seed, shuffle=False)
        self.model.train()

    def train_epoch(self, epoch: int) -> torch.Tensor:
        """One epoch's steps; the last step's loss."""
        self.train_batches.set_epoch(epoch)
        for x, y in self.train_batches:
            self.optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
        return loss


def train(c: Config, verbose: bool = False) -> tuple[nn.Module, dict]:
    """Train; returns the model and timings: per epoch, when it started, when its last
    step ended, and when its evaluation ended (time.perf_counter())."""
    loop = PlainLoop(c)
    timings: dict[str, list[float]] = {"epoch_start": [], "train_end": [], "epoch_end": []}
    for epoch in range(c.epochs):
        timings["epoch_start"].append(time.perf_counter())
        loss = loop.train_epoch(epoch)
        timings["train_end"].append(time.perf_counter())
        val_loss, val_acc = evaluate(loop.model, loop.val_batches)
        timings["epoch_end"].append(time.perf_counter())
        if verbose:
            print(f"epoch {epoch + 1}/{c.epochs}  train/loss {loss.item():.4f}  val/loss {val_loss:.4f}  "
                  f"val/acc {val_acc:.4f}", flush=True)
    timings["steps_per_epoch"] = len(loop.train_batches)
    return loop.model, timings


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --size, ... for the Config fields a contender's command line may set."""
    defaults = Config()
    for key in ("model", "size", "epochs", "batch_size", "seed", "threads"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(getattr(defaults, key)),
                            default=getattr(defaults, key))


def config_from(args: argparse.Namespace) -> Config:
    return Config(**{k: v for k, v in vars(args).items() if k in asdict(Config())})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--save", help="write the final state_dict here")
    parser.add_argument("--json", action="store_true", help="print the timings as one JSON line")
    parser.add_argument("--expkit-collector", action="store_true",
                        help="pause the garbage collector for the start and skip its final collection, as "
                             "`expkit` does, so the whole-command comparison shows expkit's own work apart from that")
    parser.add_argument("--jobs", type=int, default=1,
                        help="train this many runs one after another in this process, seeds seed, seed + 1, ... "
                             "(what `expkit train -m seed=...` does with Hydra's basic launcher)")
    args = parser.parse_args(argv)
    c = config_from(args)
    if args.expkit_collector:
        import torch._dynamo  # noqa: F401  (the optimizer imports it: part of the start, as in expkit)

        gc.freeze()
        gc.enable()
    for job in range(1, args.jobs):
        train(replace(c, seed=c.seed + job), verbose=not args.json)
    model, timings = train(c, verbose=not args.json)
    if args.save:
        torch.save(model.state_dict(), args.save)
    if args.json:
        print(json.dumps(timings))
    if args.expkit_collector:
        gc.freeze()


if __name__ == "__main__":
    main()
