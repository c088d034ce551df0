# Each target bootstraps .venv on first use, so a fresh clone needs only Python 3.10+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
# Test processes: most tests start real `expkit` processes that spend their time importing
# torch, so two pytest workers keep two cores busy (`make test WORKERS=0` runs in one process).
WORKERS ?= 2

.PHONY: train test test-fast tb sweep lessons bench gpu-check lint reference clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision pinned to what this machine's pip serves from local disk; any
	# torch>=2.3 works (pyproject.toml declares the ranges).
	$(BIN)/pip install --quiet "torch>=2.3" "torchvision>=0.18"
	$(BIN)/pip install --quiet -e ".[dev,sweep]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/expkit train $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check expkit tests bench
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadgroup $(ARGS)

# The unit tier: no expkit processes (tests marked e2e are left out); under a minute.
test-fast: $(STAMP)
	$(BIN)/ruff check expkit tests bench
	$(BIN)/python -m pytest -q -n $(WORKERS) -m "not e2e" $(ARGS)

tb: $(STAMP)
	$(BIN)/tensorboard --logdir runs --host 127.0.0.1

sweep: $(STAMP)
	$(BIN)/expkit train -m optim=adam,adamw optim.lr=1e-3,3e-4 $(ARGS)

# Every lesson of the course at full size, each report into docs/lessons/ (about ten minutes a
# lesson on 2 CPU cores). On a GPU, more seeds: make lessons ARGS="--seeds 10 trainer.accelerator=cuda"
lessons: $(STAMP)
	set -e; for name in $$($(BIN)/expkit lesson --list | cut -d' ' -f1); do \
		$(BIN)/expkit lesson $$name --out docs/lessons $(ARGS); done

# The bench extra (lightning) goes into .venv once; bench/run.py: see its docstring (~10 min on 2 cores).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py $(ARGS)

# One GPU, under 8 minutes (bench/gpu_check.py): the tests marked gpu, then the GPU bench;
# writes bench/results/gpu.md and exits 1 if a check fails. Without a GPU it says so, runs
# the CPU-runnable parts, writes bench/results/gpu_cpu_dryrun.md (never gpu.md), exits 0.
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py $(ARGS)

# docs/reference.md from the config dataclasses (expkit/config/reference.py); tests/test_readme.py
# fails while the page differs from what this writes. Written to a temporary file first, so a
# failed run leaves the page as it was.
reference: $(STAMP)
	$(BIN)/python -m expkit.config.reference > docs/reference.md.tmp || { rm -f docs/reference.md.tmp; exit 1; }
	mv docs/reference.md.tmp docs/reference.md

lint: $(STAMP)
	$(BIN)/ruff check expkit tests bench

clean:
	rm -rf $(VENV) build *.egg-info
