"""Image data at the size people train on: a folder of 50,000 32x32 PNGs (ImageFolder
layout, 10 classes), 5,000 224x224 JPEGs, and the same 50,000 images in torchvision's
CIFAR-10 on-disk format (pickled batches), all written here from generated arrays.

Side by side in one run, on CPU:

1. images/s of one epoch of batches (loader only, each batch summed as a model would read
   it): torchvision ImageFolder + DataLoader at num_workers 0, 1, 2 (the best is the
   reference), expkit's folder path (decode path) at 0 and 2 workers, expkit with
   data.cache, and expkit's in-memory tensor path on the CIFAR-10 files;
2. the first epoch's cache build (decoding every file once), for both folders;
3. the epoch time of a small MLP (3072-128-10, SGD) trained on the cache path and on the
   tensor path, without and with crop+flip, the two taking turns for --rounds rounds
   (ratio within each round, median over rounds; and the ratio of the fastest epochs);
4. peak RSS of a fresh process that trains one epoch from the cache of the 224x224 folder
   (a map of ~750 MB) with data.max_memory well below it, against the same without a cap.

    python bench/data_scale.py [--data DIR] [--rounds 7] [--images 50000] [--large 5000]

The data sets are written once into --data (default: a folder in the system's temp
directory) and reused; nothing is written into the repository except
bench/results/data_scale.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
BATCH = 256
# data.max_memory between the 32x32 map (147 MiB) and its floats (590 MiB): the map is
# memory-mapped and batches stream from it, as for a data set whose floats do not fit.
STREAM_MIB = 300
STREAMED = f"expkit folder, data.cache=true, streamed from the map (data.max_memory={STREAM_MIB})"
CLASSES = [f"c{i}" for i in range(10)]


# ------------------------------------------------------------------ the data sets
def make_arrays(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n (size, size, 3) uint8 images: a smooth pattern per class plus noise, so files
    compress a little, as photos do."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    grid = np.linspace(0, 1, size, dtype=np.float32)
    patterns = np.stack([np.stack([np.outer(np.sin(grid * (k + 1) * 3 + c), np.cos(grid * (k + 2)))
                                   for c in range(3)], -1) for k in range(10)])
    images = np.empty((n, size, size, 3), np.uint8)
    for start in range(0, n, 1000):
        part = labels[start:start + 1000]
        noise = rng.normal(0, 40, (len(part), size, size, 3))
        images[start:start + 1000] = np.clip(128 + 90 * patterns[part] + noise, 0, 255)
    return images, labels


def _write_files(args: tuple[str, np.ndarray, np.ndarray, int, str]) -> None:
    from PIL import Image

    folder, images, labels, first, ext = args
    for k, (img, label) in enumerate(zip(images, labels, strict=True)):
        path = Path(folder) / CLASSES[label] / f"{first + k:06d}.{ext}"
        Image.fromarray(img).save(path, quality=90) if ext == "jpg" else Image.fromarray(img).save(path)


def write_folder(folder: Path, images: np.ndarray, labels: np.ndarray, ext: str) -> None:
    for c in CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
    step = 2000
    jobs = [(str(folder), images[i:i + step], labels[i:i + step], i, ext) for i in range(0, len(images), step)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write_files, jobs))


def write_cifar(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """torchvision's cifar-10-batches-py: 5 training batches, a test batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    parts = np.array_split(np.arange(len(images)), 5)
    for i, idx in enumerate(parts, start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": flat[idx], "labels": labels[idx].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": flat[:1000], "labels": labels[:1000].tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES}, f)


def prepare(data: Path, n: int, n_large: int) -> dict[str, Path]:
    where = {"small": data / f"png32-{n}", "large": data / f"jpg224-{n_large}", "cifar": data / f"cifar-{n}"}
    if not (data / f"ready-{n}-{n_large}").exists():
        shutil.rmtree(data, ignore_errors=True)
        started = time.perf_counter()
        images, labels = make_arrays(n, 32, seed=0)
        write_folder(where["small"], images, labels, "png")
        write_cifar(where["cifar"], images, labels)
        write_folder(where["large"], *make_arrays(n_large, 224, seed=1), "jpg")
        (data / f"ready-{n}-{n_large}").touch()
        print(f"wrote the data sets into {data} in {time.perf_counter() - started:.0f} s")
    return where


# ------------------------------------------------------------------ the contenders
def torchvision_loader(root: Path, workers: int):
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.25] * 3)])
    ds = datasets.ImageFolder(str(root), transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)


def expkit_data(root: Path, **kw):
    from expkit.config.schema import DataConfig, FolderDataConfig
    from expkit.data import build_data

    opts = {"batch_size": BATCH, "val_fraction": 0.02, **kw}
    if opts.pop("cifar", False):
        cfg = DataConfig(name="cifar10", root=str(root), download=False, loader="tensor", **opts)
    else:
        cfg = FolderDataConfig(name="folder", root=str(root), test_fraction=0, **opts)
    return build_data(cfg, seed=0)


def epoch_images_per_s(batches) -> float:
    started, n = time.perf_counter(), 0
    for x, _ in batches:
        x.sum()
        n += len(x)
    return n / (time.perf_counter() - started)


def loader_throughput(where: dict[str, Path], workers_list: list[int]) -> dict[str, float]:
    out = {}
    for w in workers_list:
        out[f"torchvision ImageFolder + DataLoader, num_workers={w}"] = epoch_images_per_s(
            torchvision_loader(where["small"], w))
    for w in (0, 2):
        train = expkit_data(where["small"], num_workers=w).train
        out[f"expkit folder (decode path), num_workers={w}"] = epoch_images_per_s(train.iterate())
    # The two fast ones: the best of 3 epochs, taking turns (an epoch takes a second or less).
    fast = {"expkit folder, data.cache=true": expkit_data(where["small"], cache=True).train,
            STREAMED: expkit_data(where["small"], cache=True, max_memory=STREAM_MIB).train,
            "expkit tensor path (CIFAR-10 files, in memory)": expkit_data(where["cifar"], cifar=True).train}
    for name, loader in [*fast.items()] * 3:
        out[name] = max(out.get(name, 0), epoch_images_per_s(loader.iterate()))
    return out


def build_seconds(root: Path, cache_dir: Path) -> float:
    shutil.rmtree(cache_dir, ignore_errors=True)
    started = time.perf_counter()
    expkit_data(root, cache=True, cache_dir=str(cache_dir), image_size=32 if "png32" in root.name else 224)
    return time.perf_counter() - started


def small_model() -> torch.nn.Module:
    """Light on purpose: the less the step costs, the more a loader's own cost shows."""
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 128), nn.ReLU(), nn.Linear(128, 10))


def train_epoch(loader, epoch: int) -> float:
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader.sampler.set_epoch(epoch)
    started = time.perf_counter()
    for x, y in loader.iterate():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - started


def epoch_times(where: dict[str, Path], rounds: int, augment: bool) -> dict[str, list[float]]:
    loaders = {"cache": expkit_data(where["small"], cache=True, augment=augment).train,
               "cache streamed": expkit_data(where["small"], cache=True, augment=augment,
                                             max_memory=STREAM_MIB).train,
               "tensor": expkit_data(where["cifar"], cifar=True, augment=augment).train}
    times: dict[str, list[float]] = {k: [] for k in loaders}
    for r in range(rounds):
        for name in list(loaders)[r % 3:] + list(loaders)[:r % 3]:  # a rotating order
            times[name].append(train_epoch(loaders[name], r))
        print(f"  round {r + 1}/{rounds} (augment={augment}): "
              + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    return times


RSS_CHILD = """
import json, resource, sys, torch
sys.path.insert(0, sys.argv[1])
from data_scale import expkit_data
from pathlib import Path
import torchvision.datasets, expkit.data
def status(key):
    return int([line for line in open("/proc/self/status") if line.startswith(key)][0].split()[1]) / 1024
base = status("VmRSS")
cap = None if sys.argv[3] == "none" else int(sys.argv[3])
data = expkit_data(Path(sys.argv[2]), cache=True, image_size=224, max_memory=cap, batch_size=64)
n = 0
for x, y in data.train.iterate():
    n += len(x)
maps = Path(sys.argv[2]).parent.glob(Path(sys.argv[2]).name + ".expkit-cache/*224px*.npy")
print(json.dumps({"images": n, "peak_rss_mib": status("VmHWM"), "base_mib": base, "how": data.info["cache"],
                  "map_mib": sum(p.stat().st_size for p in maps if ".sha256" not in p.name) / 2**20}))
"""


def peak_rss(root: Path, cap_mib: int | None) -> dict:
    proc = subprocess.run([sys.executable, "-c", RSS_CHILD, str(HERE), str(root), str(cap_mib or "none")],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the table
def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}; load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


def table(res: dict) -> str:
    speeds, n = res["speeds"], res["images"]
    tv = {k: v for k, v in speeds.items() if k.startswith("torchvision")}
    best_tv = max(tv.values())
    lines = [f"# Image data at scale: {n:,} 32x32 PNGs, {res['large']:,} 224x224 JPEGs, CPU", "",
             f"Machine: {machine()} (other processes share the cores). Written by `python bench/data_scale.py`.",
             "", f"## Loader only: one epoch of batches of {BATCH}, images/s", "",
             "| loader | images/s | x best torchvision |", "| --- | ---: | ---: |"]
    for name, v in speeds.items():
        lines.append(f"| {name} | {v:,.0f} | {v / best_tv:.2f} |")
    cache_x = speeds["expkit folder, data.cache=true"] / best_tv
    lines += ["", f"data.cache / best torchvision: **{cache_x:.1f}x** (target >= 5x: "
              f"{'met' if cache_x >= 5 else 'not met'}).", "", "## First epoch: the cache build", "",
              "| folder | build s | images/s |", "| --- | ---: | ---: |",
              f"| {n:,} 32x32 PNGs | {res['build_small']:.1f} | {n / res['build_small']:,.0f} |",
              f"| {res['large']:,} 224x224 JPEGs | {res['build_large']:.1f} | "
              f"{res['large'] / res['build_large']:,.0f} |", "",
              f"## Training epochs: MLP 3072-128-10, cache path vs in-memory tensor path ({res['rounds']} rounds, "
              "taking turns in a rotating order)", "",
              "cache: data.cache at its defaults (the floats fit data.max_memory: held in memory); cache streamed: "
              f"data.max_memory={STREAM_MIB}, batches read from the memory-mapped map. Ratios: x / tensor within each "
              "round, median over rounds; and fastest epoch / fastest epoch.", "",
              "| augment | path | s/epoch (median) | x / tensor, per round | median | fastest / fastest |",
              "| --- | --- | ---: | --- | ---: | ---: |"]
    for aug, times in res["epochs"].items():
        for name in times:
            per_round = [c / t for c, t in zip(times[name], times["tensor"], strict=True)]
            lines.append(f"| {aug} | {name} | {statistics.median(times[name]):.2f} | "
                         f"{', '.join(f'{r:.3f}' for r in per_round)} | {statistics.median(per_round):.3f} | "
                         f"{min(times[name]) / min(times['tensor']):.3f} |")
    capped, free = res["rss"]
    lines += ["", "## Peak RSS: one epoch from the cache of the 224x224 folder (batch 64)", "",
              "RSS after the imports (torch, torchvision, expkit) is the floor; the map is read whole once per epoch.",
              "", "| data.max_memory | batches | map MiB | RSS after imports MiB | peak RSS MiB | peak - floor MiB |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for cap, r in ((f"{res['cap']} MiB", capped), ("null (half the RAM)", free)):
        lines.append(f"| {cap} | {r['how']} | {r['map_mib']:.0f} | {r['base_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['peak_rss_mib'] - r['base_mib']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "expkit-bench-data"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument("--cap", type=int, default=256, help="data.max_memory (MiB) of the peak RSS run")
    parser.add_argument("--out", default=str(HERE / "results" / "data_scale.md"))
    args = parser.parse_args(argv)
    logging.getLogger("expkit").setLevel(logging.ERROR)  # a small --images run warns of missing classes
    started = time.perf_counter()
    where = prepare(Path(args.data), args.images, args.large)
    res = {"images": args.images, "large": args.large, "rounds": args.rounds, "cap": args.cap}
    res["build_small"] = build_seconds(where["small"], Path(args.data) / "build-small")
    res["build_large"] = build_seconds(where["large"], Path(args.data) / "build-large")
    print(f"cache builds: {res['build_small']:.1f} s, {res['build_large']:.1f} s")
    res["speeds"] = loader_throughput(where, [0, 1, 2])
    print("\n".join(f"  {k}: {v:,.0f} images/s" for k, v in res["speeds"].items()))
    res["epochs"] = {aug: epoch_times(where, args.rounds, aug == "crop+flip") for aug in ("none", "crop+flip")}
    expkit_data(where["large"], cache=True, image_size=224, max_memory=1)  # the map built before measuring
    res["rss"] = [peak_rss(where["large"], args.cap), peak_rss(where["large"], None)]
    text = table(res)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"written to {args.out} in {time.perf_counter() - started:.0f} s; peak RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return res


if __name__ == "__main__":
    main()
