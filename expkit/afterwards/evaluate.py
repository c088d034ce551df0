"""`expkit eval RUN_DIR` and expkit.evaluate: a checkpoint scored on one split of the run's
data (or, with overrides, another data set of the same shape), normalized with the run's
own training statistics. Writes RUN_DIR/eval/<split>-<checkpoint>.json (with overrides:
<split>-<checkpoint>-<data>-<hash of the overrides>.json), a confusion-matrix PNG beside
it, and the same picture as a TensorBoard image in the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expkit.afterwards.loading import RunModel, load_run
from expkit.errors import ConfigError
from expkit.run.folder import RunDir, strict, write_atomic, write_json

SPLITS = ("test", "val", "train")


def split_loader(run: RunModel, split: str):
    """The split's loader, built like training's but normalized with the run's statistics."""
    from expkit.data import build_data

    if split not in SPLITS:
        raise ConfigError(f"--split: value {split!r} is not allowed; choose one of {', '.join(SPLITS)}.")
    d = run.typed["data"]
    data = build_data(d, run.typed["seed"], device=run.device, stats=(run.mean, run.std))
    if tuple(data.input_shape) != tuple(run.input_shape) or data.num_classes != len(run.classes):
        raise ConfigError(f"data.name: data set {d.name!r} gives inputs {list(data.input_shape)} in "
                          f"{data.num_classes} classes; this run's model takes {list(run.input_shape)} in "
                          f"{len(run.classes)} classes.")
    loader = {"train": data.train, "val": data.val, "test": data.test}[split]
    if loader is None:
        raise ConfigError(f"--split test: data set {d.name!r} has no test split here (it has none of its own "
                          f"and data.test_fraction is {d.test_fraction}); use --split val.")
    return loader, data


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def scores(confusion: list[list[int]], classes: list[str]) -> dict[str, dict[str, Any]]:
    """Per class: precision, recall and F1 (null where undefined: no example predicted or present)."""
    out = {}
    for i, name in enumerate(classes):
        tp = confusion[i][i]
        support, predicted = sum(confusion[i]), sum(row[i] for row in confusion)
        p, r = _ratio(tp, predicted), _ratio(tp, support)
        f1 = None if p is None or r is None else (2 * p * r / (p + r) if p + r else 0.0)
        out[name] = {"precision": p, "recall": r, "f1": f1, "support": support}
    return out


def score(run: RunModel, loader) -> dict[str, Any]:
    import torch

    n = len(run.classes)
    confusion = torch.zeros(n * n, dtype=torch.long)
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader.iterate():
            x, y = x.to(run.device), y.to(run.device)
            logits = run.model(x).float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            confusion += torch.bincount((y * n + logits.argmax(1)).cpu(), minlength=n * n)
            count += len(y)
    matrix = confusion.view(n, n).tolist()
    correct = sum(matrix[i][i] for i in range(n))
    return {"examples": count, "loss": loss_sum / max(count, 1), "acc": correct / max(count, 1),
            "per_class": scores(matrix, run.classes), "confusion": matrix}


def evaluate(run_dir: str | Path, split: str = "test", checkpoint: str = "best",
             overrides: list[str] | tuple[str, ...] = (), save: bool = True) -> dict[str, Any]:
    """The eval dict: split, checkpoint, step, loss, acc, per_class, confusion (and more)."""
    run = load_run(run_dir, checkpoint, overrides)
    loader, data = split_loader(run, split)
    result = {"split": split, "checkpoint": run.label, "step": run.saved.step,
              "epoch": run.saved.epoch, "checkpoint_file": str(run.checkpoint),
              "data": data.info["name"], "overrides": list(overrides), **score(run, loader),
              "classes": run.classes}
    result = strict(result)
    if save:
        result["files"] = write_outputs(run, result)
    return result


def write_outputs(run: RunModel, result: dict[str, Any]) -> list[str]:
    rundir = RunDir(run.path)
    folder = rundir.output_folder(rundir.eval_dir)
    stem = f"{result['split']}-{run.label}"
    if result["overrides"]:  # another data set (or setting): its own files, beside the run's own
        import hashlib

        digest = hashlib.sha1(" ".join(result["overrides"]).encode()).hexdigest()[:6]
        stem += f"-{result['data']}-{digest}"
    png = confusion_png(result)
    write_atomic(folder / f"{stem}.png", png)
    write_json(folder / f"{stem}.json", result)
    if run.typed["trainer"].tensorboard:
        from expkit.training.tb import Writer

        writer = Writer(run.path)
        writer.png(f"eval/{stem}/confusion", png, result["step"] or 0)
        writer.close()
    return [str(folder / f"{stem}.json"), str(folder / f"{stem}.png")]


def confusion_png(result: dict[str, Any]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, matrix = result["classes"], result["confusion"]
    n = len(classes)
    side = min(12.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ticks = range(n)
    ax.set_xticks(ticks, [str(c)[:12] for c in classes], rotation=90 if n > 10 else 0)
    ax.set_yticks(ticks, [str(c)[:12] for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        top = max(max(row) for row in matrix) or 1
        for i in range(n):
            for j in range(n):
                if matrix[i][j]:
                    ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=8,
                            color="white" if matrix[i][j] > top / 2 else "black")
    ax.set_title(f"{result['split']} split, checkpoint {result['checkpoint']} (step {result['step']}): "
                 f"acc {result['acc']:.4f}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def table(result: dict[str, Any]) -> str:
    """What `expkit eval` prints: loss, accuracy, the per-class table."""
    def num(v):
        return "-" if v is None else f"{v:.4f}"

    width = max(5, *(len(str(c)) for c in result["per_class"]))
    lines = [f"{result['split']} split ({result['examples']} examples, data {result['data']}), checkpoint "
             f"{result['checkpoint']} (epoch {result['epoch']}, step {result['step']})",
             f"loss {num(result['loss'])}  acc {num(result['acc'])}", "",
             f"{'class':<{width}}  precision  recall  f1      support"]
    for name, s in result["per_class"].items():
        lines.append(f"{name:<{width}}  {num(s['precision']):<9}  {num(s['recall']):<6}  {num(s['f1']):<6}  "
                     f"{s['support']}")
    return "\n".join(lines)
