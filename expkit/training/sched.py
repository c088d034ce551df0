"""LR schedules: torch's schedulers behind an optional linear warmup, each stepped at
its own granularity.

    onecycle            after every optimizer step
    plateau             after every evaluation, on sched.monitor
    everything else     at the end of every epoch

During warmup (sched.warmup_epochs, may be fractional) the LR rises linearly per step to
the value the main scheduler starts from; the main schedule then runs over the epochs
that remain, as if training had started there.
"""

from __future__ import annotations

import math

import torch

PER_STEP = {"onecycle"}


class Schedule:
    def __init__(self, optimizer: torch.optim.Optimizer, cfg, epochs: int, steps_per_epoch: int):
        self.cfg = cfg
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
        self.main_epochs = max(1, epochs - self.warmup_steps // steps_per_epoch)
        self.main_steps = max(1, epochs * steps_per_epoch - self.warmup_steps)
        self.main = self._build_main(cfg)
        self.step_count = 0  # optimizer steps taken so far
        # Where the main schedule starts; warmup climbs to it.
        self.target_lrs = [g["lr"] for g in optimizer.param_groups]
        self._apply_warmup()

    def _build_main(self, cfg):
        s, opt = torch.optim.lr_scheduler, self.optimizer
        if cfg.name == "none":
            return None
        if cfg.name == "step":
            return s.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
        if cfg.name == "multistep":
            return s.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
        if cfg.name == "exponential":
            return s.ExponentialLR(opt, gamma=cfg.gamma)
        if cfg.name == "cosine":
            return s.CosineAnnealingLR(opt, T_max=self.main_epochs, eta_min=cfg.eta_min)
        if cfg.name == "plateau":
            from expkit.tasks.names import lower_is_better

            mode = "min" if lower_is_better(cfg.monitor) else "max"
            return s.ReduceLROnPlateau(opt, mode=mode, factor=cfg.factor, patience=cfg.patience,
                                       min_lr=cfg.min_lr)
        if cfg.name == "onecycle":
            max_lr = cfg.max_lr or 10 * opt.param_groups[0]["lr"]
            return s.OneCycleLR(opt, max_lr=max_lr, total_steps=self.main_steps,
                                pct_start=cfg.pct_start, anneal_strategy=cfg.anneal_strategy,
                                div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)
        raise ValueError(f"sched.name: unknown scheduler {cfg.name!r}")

    @property
    def in_warmup(self) -> bool:
        return self.step_count < self.warmup_steps

    def _apply_warmup(self) -> None:
        if self.warmup_steps == 0:
            return
        fraction = min(1.0, (self.step_count + 1) / self.warmup_steps)
        for group, target in zip(self.optimizer.param_groups, self.target_lrs, strict=True):
            group["lr"] = target * fraction

    def step_batch(self) -> None:
        """Call after every optimizer step."""
        used_main = not self.in_warmup
        self.step_count += 1
        if self.in_warmup or self.step_count == self.warmup_steps:
            self._apply_warmup()  # the last call lands exactly on the target LR
        elif used_main and self.cfg.name in PER_STEP and self.step_count <= self.main_steps + self.warmup_steps:
            self.main.step()

    def step_epoch(self) -> None:
        """Call at the end of every epoch."""
        if self.main is None or self.cfg.name in PER_STEP or self.cfg.name == "plateau":
            return
        if self.step_count > self.warmup_steps:  # this epoch ran at least one post-warmup step
            self.main.step()

    def step_eval(self, metrics: dict[str, float]) -> None:
        """Call after every evaluation."""
        if self.cfg.name == "plateau" and not self.in_warmup:
            self.main.step(metrics[self.cfg.monitor])

    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "target_lrs": list(self.target_lrs),
                "main": self.main.state_dict() if self.main is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]
        self.target_lrs = list(state["target_lrs"])
        if self.main is not None:
            self.main.load_state_dict(state["main"])


def simulate(cfg_sched, cfg_optim, epochs: int, steps_per_epoch: int) -> list[float]:
    """The LR of every step of a run, without training. Plateau sees a metric that never
    improves (its LR then drops every patience + 1 evaluations)."""
    from expkit.training.optim import build_optim

    model = torch.nn.Linear(1, 1)
    optimizer = build_optim(model, cfg_optim)
    schedule = Schedule(optimizer, cfg_sched, epochs, steps_per_epoch)
    from expkit.tasks.names import lower_is_better

    worst = math.inf if lower_is_better(getattr(cfg_sched, "monitor", "val/loss")) else -math.inf
    lrs = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(schedule.lrs()[0])
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch()
        schedule.step_eval({getattr(cfg_sched, "monitor", "val/loss"): worst})
    return lrs
