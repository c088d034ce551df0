"""trainer.profile=N: torch.profiler over N training steps.

The first WAIT steps run untraced (their one-time costs, first allocations and kernel
choices, are not what a step costs), the next WARMUP are traced and dropped (the profiler's
own start-up), then N are recorded. The trace goes to the run folder's profile/trace.json
(Chrome trace format: https://ui.perfetto.dev or chrome://tracing open it) and the top
operators by self time to train.log. Off (trainer.profile=0) no profiler exists: the loop
only tests that its reference is None.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("expkit")
WAIT, WARMUP = 2, 2
TOP = 15  # operators in train.log's table


class StepProfiler:
    def __init__(self, steps: int, trace: Path, device: torch.device):
        from torch.profiler import ProfilerActivity, profile, schedule

        self.steps, self.trace, self.device = steps, Path(trace), device
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.taken = 0  # optimizer steps since the start
        self.written = False
        self.prof = profile(activities=activities, on_trace_ready=self.write,
                            schedule=schedule(wait=WAIT, warmup=WARMUP, active=steps, repeat=1))
        self.prof.start()

    def step(self) -> StepProfiler | None:
        """After each optimizer step; None once the trace is written (the trainer drops it)."""
        self.taken += 1
        self.prof.step()
        return self if self.taken < WAIT + WARMUP + self.steps else self.stop()

    def stop(self) -> None:
        """End the trace (a run shorter than the trace writes what it recorded)."""
        self.prof.stop()
        if not self.written:
            log.info("profile: training ended after %d of the %d steps to trace (trainer.profile=%d, after %d "
                     "warm-up steps); no trace written", self.taken,
                     WAIT + WARMUP + self.steps, self.steps, WAIT + WARMUP)
        return None

    def write(self, prof) -> None:
        traced = min(self.steps, self.taken - WAIT - WARMUP)
        if traced <= 0:  # stopped before the first recorded step
            return
        self.trace.parent.mkdir(parents=True, exist_ok=True)
        partial = self.trace.with_name(self.trace.name + ".tmp")
        prof.export_chrome_trace(str(partial))
        os.replace(partial, self.trace)  # a trace file is whole or absent
        self.written = True
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=TOP)
        shown = f"{traced} of the {self.steps} steps asked for" if traced < self.steps else f"{traced} steps"
        log.info("profile: %s traced into %s (open it in https://ui.perfetto.dev or chrome://tracing); "
                 "top %d operators by self time:\n%s", shown, self.trace, TOP, table)
