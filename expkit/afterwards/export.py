"""`expkit export RUN_DIR`: the checkpoint's model as one file plain torch loads without
expkit: torch.export (`torch.export.load(...).module()`, the default) or TorchScript
(`torch.jit.load`, which torch deprecates).
The normalization of the run's training data is inside, so the file takes raw inputs in
[0, 1] shaped (N, *input_shape) (a table's rows as they are written) and returns logits
(a regression: values in the targets' own units, their standardization undone inside).
The file is read back after writing and its outputs compared with the checkpoint's on a
batch; a JSON file beside it says what it takes and returns."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

from expkit.afterwards.loading import RunModel, load_run
from expkit.errors import EXIT_FAILED, ConfigError, RunFailed
from expkit.run.folder import RunDir, write_atomic, write_json

FORMATS = {"torchscript": ".torchscript.pt", "exported": ".pt2"}
ATOL, RTOL = 1e-5, 1e-4


def normalized(run: RunModel):
    """The model with the run's normalization in front of it."""
    import torch
    from torch import nn

    class Normalized(nn.Module):
        def __init__(self, model: nn.Module, mean: list[float], std: list[float], ndim: int,
                     targets: tuple[list[float], list[float]] | None):
            super().__init__()
            shape = (1, -1) + (1,) * (ndim - 1)
            self.model = model
            self.register_buffer("mean", torch.tensor(mean).view(shape))
            self.register_buffer("std", torch.tensor(std).view(shape))
            t_mean, t_std = targets or ([0.0], [1.0])
            self.register_buffer("target_mean", torch.tensor(t_mean).view(1, -1))
            self.register_buffer("target_std", torch.tensor(t_std).view(1, -1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model((x - self.mean) / self.std) * self.target_std + self.target_mean

    targets = run.target_stats if run.task.name == "regression" else None
    return Normalized(run.model, run.mean, run.std, len(run.input_shape), targets).eval()


def output_words(run: RunModel) -> str:
    width = int(run.facts.get("outputs") or len(run.classes))
    return {"regression": f"values in the targets' units (N, {width})",
            "multilabel": f"logits (N, {width}); a label is predicted where sigmoid(logit) > its threshold",
            "python": f"the model's outputs (N, {width})"}.get(run.task.name, f"logits (N, {width})")


def example_batch(run: RunModel, n: int = 8):
    import torch

    return torch.rand((n, *run.input_shape), generator=torch.Generator().manual_seed(0))


def to_bytes(module, example, fmt: str, extra: dict[str, str]) -> bytes:
    import torch

    buffer = io.BytesIO()
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice, not ours to act on
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, buffer, _extra_files=extra)
    else:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, buffer, extra_files=extra)
    return buffer.getvalue()


def load_exported(path: Path, fmt: str):
    """How a user loads the file, with plain torch."""
    import torch

    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    return torch.export.load(str(path)).module()


def export(run_dir: str | Path, checkpoint: str = "best", fmt: str = "exported",
           overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    import torch

    if fmt not in FORMATS:
        raise ConfigError(f"--format: value {fmt!r} is not allowed; choose one of {', '.join(FORMATS)}.")
    run = load_run(run_dir, checkpoint, overrides, device="cpu")
    module = normalized(run)
    example = example_batch(run)
    info = {"format": fmt, "checkpoint": run.label, "checkpoint_file": str(run.checkpoint),
            "step": run.saved.step, "epoch": run.saved.epoch,
            "input": f"float32 (N, {', '.join(map(str, run.input_shape))}) "
                     f"{'as the table holds them' if len(run.input_shape) == 1 else 'in [0, 1]'}; normalized inside",
            "output": output_words(run), "task": run.task.name, "input_shape": list(run.input_shape),
            **({"targets": run.task.names} if run.task.name in ("regression", "multilabel") else {}),
            **({"thresholds": run.task.threshold.tolist()} if run.task.name == "multilabel" else {}),
            "classes": run.classes, "mean": run.mean, "std": run.std,
            "load": "torch.jit.load(PATH)" if fmt == "torchscript" else "torch.export.load(PATH).module()"}
    try:
        data = to_bytes(module, example, fmt, {"expkit.json": json.dumps(info)})
    except Exception as e:
        other = next(f for f in FORMATS if f != fmt)
        raise ConfigError(f"--format {fmt}: this model cannot be exported so: {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0]}; try --format {other}") from None
    rundir = RunDir(run.path)
    folder = rundir.output_folder(rundir.export_dir)
    path = folder / f"model-{run.label}{FORMATS[fmt]}"
    write_atomic(path, data)
    # Read back as a user would, and compare with the checkpoint's model (a batch of 1 too).
    loaded = load_exported(path, fmt)
    with torch.no_grad():
        pairs = [(loaded(x), module(x)) for x in (example, example[:1])]
    diff = max(float((a - b).abs().max()) for a, b in pairs)
    if not all(torch.allclose(a, b, rtol=RTOL, atol=ATOL) for a, b in pairs):
        path.unlink(missing_ok=True)  # a file that does not do what the checkpoint does is not left behind
        raise RunFailed(f"{path}: its outputs differ from the checkpoint's by up to {diff:.3g}", EXIT_FAILED)
    info.update(file=str(path), max_abs_diff=diff)
    write_json(folder / f"{path.name}.json", info)
    return info
