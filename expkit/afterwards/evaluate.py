"""`expkit eval RUN_DIR` and expkit.evaluate: a checkpoint scored on one split of the run's
data (or, with overrides, another data set of the same shape), normalized with the run's
own training statistics. Writes RUN_DIR/eval/<split>-<checkpoint>.json (with overrides:
<split>-<checkpoint>-<data>-<hash of the overrides>.json), a PNG beside it (the confusion
matrix; for regression predicted against true and the residuals; for multi-label each
label's F1 and average precision), and the same picture as a TensorBoard image in the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expkit.afterwards.loading import RunModel, load_run
from expkit.errors import ConfigError
from expkit.printable import cell
from expkit.run.folder import RunDir, strict, write_atomic, write_json

SPLITS = ("test", "val", "train")


def split_loader(run: RunModel, split: str):
    """The split's loader, built like training's but normalized with the run's statistics."""
    from expkit.data import build_data
    from expkit.data.sources import reading_only

    if split not in SPLITS:
        raise ConfigError(f"--split: value {split!r} is not allowed; choose one of {', '.join(SPLITS)}.")
    d = run.typed["data"]
    with reading_only():
        data = build_data(d, run.typed["seed"], device=run.device, stats=(run.mean, run.std), task=run.task.name,
                          target_stats=run.target_stats)
    outputs = int(run.facts.get("outputs") or len(run.classes))
    if tuple(data.input_shape) != tuple(run.input_shape) or data.outputs != outputs:
        noun = {"regression": "targets", "multilabel": "labels"}.get(run.task.name, "classes")
        raise ConfigError(f"data.name: data set {d.name!r} gives inputs {list(data.input_shape)} in "
                          f"{data.outputs} {noun}; this run's model takes {list(run.input_shape)} in "
                          f"{outputs} {noun}.")
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
    if run.task.name != "classification":
        return score_task(run, loader)
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


def score_task(run: RunModel, loader) -> dict[str, Any]:
    """The task's metrics of the split, and what its picture and table show: per target
    (regression, with predictions and truths in the targets' units) or per label."""
    import torch

    scorer = run.task.scorer(run.device)
    outputs, truths, count = [], [], 0
    with torch.no_grad():
        for x, y in loader.iterate():
            x, y = x.to(run.device), y.to(run.device)
            out = run.model(x).float()
            scorer.add(out, y)
            outputs.append(out.cpu())
            truths.append(y.cpu())
            count += len(y)
    result: dict[str, Any] = {"examples": count, **scorer.result()}
    out, y = torch.cat(outputs), torch.cat(truths)
    if run.task.name == "regression":
        predicted, true = run.task.predict(out), run.task.predict(y)
        result["per_target"] = per_target(predicted, true, run.task.names)
        result["points"] = {"predicted": predicted.tolist(), "true": true.tolist()}
    elif run.task.name == "multilabel":
        result["per_label"] = per_label(run.task, out, y)
    return result


def per_target(predicted, true, names: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for j, name in enumerate(names):
        error = predicted[:, j].double() - true[:, j].double()
        spread = ((true[:, j].double() - true[:, j].double().mean()) ** 2).sum()
        out[name] = {"mae": float(error.abs().mean()), "rmse": float((error ** 2).mean().sqrt()),
                     "r2": float(1 - (error ** 2).sum() / spread) if spread > 0 else None}
    return out


def per_label(task, out, y) -> dict[str, dict[str, Any]]:
    from expkit.tasks.builtin import mean_average_precision

    probs = task.predict(out)
    predicted, truth = task.above(probs), y > 0.5
    rows = {}
    for j, name in enumerate(task.names):
        tp = int((predicted[:, j] & truth[:, j]).sum())
        n_pred, support = int(predicted[:, j].sum()), int(truth[:, j].sum())
        p, r = _ratio(tp, n_pred), _ratio(tp, support)
        f1 = None if p is None or r is None else (2 * p * r / (p + r) if p + r else 0.0)
        ap = mean_average_precision(probs[:, j:j + 1], truth[:, j:j + 1]) if support else None
        rows[name] = {"precision": p, "recall": r, "f1": f1, "ap": ap, "support": support,
                      "threshold": float(task.threshold[j])}
    return rows


def evaluate(run_dir: str | Path, split: str = "test", checkpoint: str = "best",
             overrides: list[str] | tuple[str, ...] = (), save: bool = True) -> dict[str, Any]:
    """The eval dict: split, checkpoint, step, loss, acc, per_class, confusion (and more)."""
    run = load_run(run_dir, checkpoint, overrides)
    loader, data = split_loader(run, split)
    result = {"split": split, "checkpoint": run.label, "step": run.saved.step,
              "epoch": run.saved.epoch, "checkpoint_file": str(run.checkpoint),
              "data": data.info["name"], "overrides": list(overrides), "task": run.task.name,
              **score(run, loader), "classes": run.classes}
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
    png = picture(result)
    write_atomic(folder / f"{stem}.png", png)
    write_json(folder / f"{stem}.json", result)
    if run.typed["trainer"].tensorboard:
        from expkit.training.tb import Writer

        writer = Writer(run.path)
        tag = {"regression": "predicted", "multilabel": "labels"}.get(result.get("task"), "confusion")
        writer.png(f"eval/{stem}/{tag}", png, result["step"] or 0)
        writer.close()
    return [str(folder / f"{stem}.json"), str(folder / f"{stem}.png")]


def picture(result: dict[str, Any]) -> bytes:
    """The PNG for the task: confusion matrix, predicted vs true with residuals, per-label scores."""
    if result.get("task") == "regression":
        return regression_png(result)
    if result.get("task") == "multilabel":
        return labels_png(result)
    if result.get("task", "classification") == "classification":
        return confusion_png(result)
    return scores_png(result)


def _figure(width: float, height: float, panels: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(width, height), dpi=100)
    return plt, fig, axes


def _png(plt, fig) -> bytes:
    import io

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _title(result: dict[str, Any], what: str) -> str:
    return f"{result['split']} split, checkpoint {result['checkpoint']} (step {result['step']}): {what}"


def regression_png(result: dict[str, Any]) -> bytes:
    """Predicted against true (the diagonal is perfect) and the residuals against the
    prediction, per target, in the targets' units."""
    names = list(result["per_target"])
    plt, fig, axes = _figure(9, 4 * len(names), 2)
    predicted, true = result["points"]["predicted"], result["points"]["true"]
    rows = axes.reshape(-1, 2) if len(names) > 1 else [axes]
    for j, (name, (left, right)) in enumerate(zip(names, rows, strict=True)):
        p, t = [v[j] for v in predicted], [v[j] for v in true]
        left.scatter(t, p, s=8, alpha=0.6)
        lo, hi = min(t + p), max(t + p)
        left.plot([lo, hi], [lo, hi], color="gray", linewidth=1)
        left.set_xlabel(f"true {name}")
        left.set_ylabel(f"predicted {name}")
        right.scatter(p, [a - b for a, b in zip(p, t, strict=True)], s=8, alpha=0.6)
        right.axhline(0, color="gray", linewidth=1)
        right.set_xlabel(f"predicted {name}")
        right.set_ylabel("residual (predicted - true)")
        s = result["per_target"][name]
        left.set_title(f"{name}: rmse {s['rmse']:.4g}, mae {s['mae']:.4g}, r2 "
                       f"{'-' if s['r2'] is None else format(s['r2'], '.4f')}", fontsize=9)
    fig.suptitle(_title(result, f"rmse {result['rmse']:.4g}, r2 {result['r2']:.4f}"), fontsize=9)
    return _png(plt, fig)


def labels_png(result: dict[str, Any]) -> bytes:
    names = list(result["per_label"])
    plt, fig, ax = _figure(min(14.0, 3 + 0.5 * len(names)), 4)
    xs = range(len(names))
    f1 = [result["per_label"][n]["f1"] or 0.0 for n in names]
    ap = [result["per_label"][n]["ap"] or 0.0 for n in names]
    ax.bar([x - 0.2 for x in xs], f1, width=0.4, label="F1")
    ax.bar([x + 0.2 for x in xs], ap, width=0.4, label="average precision")
    ax.set_xticks(list(xs), [str(n)[:12] for n in names], rotation=90 if len(names) > 10 else 0)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(_title(result, f"map {result['map']:.4f}, f1 micro {result['f1_micro']:.4f}"), fontsize=9)
    return _png(plt, fig)


def scores_png(result: dict[str, Any]) -> bytes:
    """Own metrics (task=python): one bar each."""
    skip = {"examples", "step", "epoch"}
    names = [k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip]
    plt, fig, ax = _figure(max(4.0, 1 + 0.8 * len(names)), 4)
    ax.bar(names, [result[n] if result[n] is not None else 0.0 for n in names])
    ax.set_title(_title(result, "own metrics"), fontsize=9)
    return _png(plt, fig)


def confusion_png(result: dict[str, Any]) -> bytes:
    classes, matrix = result["classes"], result["confusion"]
    n = len(classes)
    side = min(12.0, 2.5 + 0.45 * n)
    plt, fig, ax = _figure(side, side)
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
    ax.set_title(_title(result, f"acc {result['acc']:.4f}"), fontsize=9)
    return _png(plt, fig)


def table(result: dict[str, Any]) -> str:
    """What `expkit eval` prints: loss, accuracy, the per-class table (or the task's own)."""
    def num(v):
        return "-" if v is None else f"{v:.4f}"

    if result.get("task", "classification") != "classification":
        return task_table(result, num)

    per_class = {cell(c): s for c, s in result["per_class"].items()}  # names from the run: one line each
    width = max(5, *(len(c) for c in per_class))
    lines = [f"{result['split']} split ({result['examples']} examples, data {cell(result['data'])}), checkpoint "
             f"{cell(result['checkpoint'])} (epoch {result['epoch']}, step {result['step']})",
             f"loss {num(result['loss'])}  acc {num(result['acc'])}", "",
             f"{'class':<{width}}  precision  recall  f1      support"]
    for name, s in per_class.items():
        lines.append(f"{name:<{width}}  {num(s['precision']):<9}  {num(s['recall']):<6}  {num(s['f1']):<6}  "
                     f"{s['support']}")
    return "\n".join(lines)


def task_table(result: dict[str, Any], num) -> str:
    """Regression: the metrics, then per target; multi-label: per label; own: the metrics."""
    from expkit.tasks.names import split_metrics

    task = result["task"]
    known = [k for k in split_metrics(task) if k in result]
    own = [k for k, v in result.items() if task == "python" and k not in known and k not in (
        "examples", "step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines = [f"{result['split']} split ({result['examples']} examples, data {cell(result['data'])}, task {task}), "
             f"checkpoint {cell(result['checkpoint'])} (epoch {result['epoch']}, step {result['step']})",
             "  ".join(f"{k} {num(result[k])}" for k in [*known, *own]), ""]
    if task == "regression":
        per_target = {cell(n): s for n, s in result["per_target"].items()}
        width = max(6, *(len(n) for n in per_target))
        lines.append(f"{'target':<{width}}  rmse        mae         r2")
        for name, s in per_target.items():
            lines.append(f"{name:<{width}}  {s['rmse']:<10.4g}  {s['mae']:<10.4g}  {num(s['r2'])}")
    elif task == "multilabel":
        per_label = {cell(n): s for n, s in result["per_label"].items()}
        width = max(5, *(len(n) for n in per_label))
        lines.append(f"{'label':<{width}}  precision  recall  f1      ap      support  threshold")
        for name, s in per_label.items():
            lines.append(f"{name:<{width}}  {num(s['precision']):<9}  {num(s['recall']):<6}  {num(s['f1']):<6}  "
                         f"{num(s['ap']):<6}  {s['support']:<7}  {s['threshold']:g}")
    return "\n".join(lines).rstrip()
