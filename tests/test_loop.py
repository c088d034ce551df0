"""The training loop's switches, in process: gradient accumulation, EMA of the weights, the
weight-norm schedule, torch.compile's checkpoints, and no hidden host syncs."""

from __future__ import annotations

import collections

import pytest
import torch
from conftest import build_trainer
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from expkit.config.compose import training_differences
from expkit.errors import ConfigError
from expkit.run import checkpoint
from expkit.training.ema import EMA

QUIET = ["trainer.progress=off", "trainer.graph=false"]
# Synthetic features with no dropout or normalization: a step on N micro-batches of B is a
# step on one batch of N x B (the same examples: the sampler's order is the batch size's).
PLAIN_MLP = ["data=synthetic", "data.shape=[8]", "data.size=256", "data.num_classes=4", "model=mlp",
             "model.depth=2", "model.width=16", "reg=none", "trainer.tensorboard=false",
             "trainer.checkpoint=false", *QUIET]


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}


# ---------------------------------------------------------------- accumulation
def test_accumulated_micro_batches_step_like_one_large_batch(tmp_path):
    big = build_trainer(tmp_path / "big", [*PLAIN_MLP, "data.batch_size=64", "sched=onecycle", "trainer.epochs=2"])
    acc = build_trainer(tmp_path / "acc", [*PLAIN_MLP, "data.batch_size=16", "trainer.accumulate=4",
                                           "sched=onecycle", "trainer.epochs=2"])
    assert len(acc.data.train) == 4 * len(big.data.train) == 16
    start = weights(acc)
    lrs = {"big": [], "acc": []}
    for epoch in range(2):
        for name, trainer in (("big", big), ("acc", acc)):
            trainer.train_epoch(epoch)
            lrs[name].append(trainer.optimizer.param_groups[0]["lr"])
            trainer.schedule.step_epoch()
    assert big.step == acc.step == 8  # optimizer steps, not micro-batches
    assert lrs["big"] == pytest.approx(lrs["acc"])  # the schedule counts optimizer steps too
    for k, v in weights(big).items():
        torch.testing.assert_close(weights(acc)[k], v, rtol=1e-5, atol=1e-6)
    assert not any(torch.equal(weights(acc)[k], v) for k, v in start.items())  # the steps did change them


def test_the_epochs_last_smaller_group_steps_too_and_max_steps_counts_steps(tmp_path):
    # 256 examples in batches of 48: 6 micro-batches (the last one of 16), groups of 4 and 2.
    trainer = build_trainer(tmp_path / "run", [*PLAIN_MLP, "data.batch_size=48", "trainer.accumulate=4"])
    trainer.train_epoch(0)
    assert (trainer.step, trainer.batch, trainer.micro) == (2, 6, 0)
    stopped = build_trainer(tmp_path / "max", [*PLAIN_MLP, "data.batch_size=16", "trainer.accumulate=3",
                                               "trainer.max_steps=2"])
    stopped.train_epoch(0)
    assert (stopped.step, stopped.batch, stopped.micro) == (2, 6, 0)  # stopped between two optimizer steps


def test_a_resume_mid_epoch_with_accumulation_and_ema_is_bitwise(tmp_path):
    keys = [*PLAIN_MLP, "data.batch_size=16", "trainer.accumulate=3", "trainer.ema=0.9", "trainer.ema_warmup=true",
            "trainer.checkpoint=true"]
    whole = build_trainer(tmp_path / "whole", keys)
    whole.train_epoch(0)
    first = build_trainer(tmp_path / "first", [*keys, "trainer.max_steps=2"])
    first.train_epoch(0)  # stops after 6 of 16 micro-batches
    first.save_checkpoint(best=False, wait=True)
    saved = checkpoint.load_file(checkpoint.named_file(first.rundir.checkpoints, checkpoint.LAST))
    assert saved.batch == 6 and saved.ema is not None
    second = build_trainer(tmp_path / "second", keys)
    second.load_checkpoint(saved)
    second.train_epoch(0, start_batch=second.batch)
    assert second.step == whole.step == 6
    for name, tensor in weights(whole).items():
        assert torch.equal(weights(second)[name], tensor), name
    for name, tensor in whole.ema.state_dict().items():
        assert torch.equal(second.ema.state_dict()[name], tensor), name


def test_ddp_skips_the_all_reduce_on_the_first_micro_batches(tmp_path, monkeypatch):
    import torch.distributed as td

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    td.init_process_group("gloo", rank=0, world_size=1)
    try:
        trainer = build_trainer(tmp_path / "run", [*PLAIN_MLP, "data.batch_size=32", "trainer.accumulate=4"])
        reduced = []

        def counting_hook(state, bucket):
            reduced.append(trainer.micro)
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
        trainer.model.register_comm_hook(None, counting_hook)
        trainer.train_epoch(0)
    finally:
        td.destroy_process_group()
    assert trainer.step == 2 and len(trainer.data.train) == 8
    assert len(reduced) == 2  # one bucket per optimizer step, none on the 6 micro-batches before them


# ------------------------------------------------------------------------- EMA
def test_ema_averages_every_step_and_swaps_in_for_scoring(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.75)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(4, 3))  # batchnorm's running averages and counter move
    ema.update(step=1)
    for k, v in model.state_dict().items():
        expected = v if not v.is_floating_point() else start[k] + 0.25 * (v - start[k])
        torch.testing.assert_close(ema.state_dict()[k], expected)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied():
        assert all(torch.equal(model.state_dict()[k], ema.state_dict()[k]) for k in trained)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    assert EMA(model, 0.999, warmup=True).decay_at(0) == pytest.approx(0.1)


def test_with_ema_validation_scores_the_average_and_checkpoints_hold_it(tmp_path):
    trainer = build_trainer(tmp_path / "run", [*PLAIN_MLP, "trainer.ema=0.5", "trainer.checkpoint=true"])
    trainer.train_epoch(0)
    trainer.evaluate_and_record(1)
    with trainer.ema.applied():
        averaged, _ = trainer.evaluate(trainer.data.val)
    trained, _ = trainer.evaluate(trainer.data.val)
    assert averaged != trained
    m = trainer.last_metrics
    assert (m["val/loss"], m["raw/val/loss"]) == (averaged["loss"], trained["loss"])
    trainer.save_checkpoint(best=True, wait=True)
    best = checkpoint.load_file(checkpoint.named_file(trainer.rundir.checkpoints, checkpoint.BEST))
    assert best.weights is best.ema and best.ema.keys() == best.model.keys()
    assert all(torch.equal(best.ema[k], v) for k, v in trainer.ema.state_dict().items())
    # A checkpoint without the field (EMA off, or written before it existed) reads as before.
    state = best.to_state()
    del state["ema"]
    old = checkpoint.Checkpoint.from_state(state, best.path)
    assert old.ema is None and old.weights is old.model


# ------------------------------------------------------------------- the keys
@pytest.mark.parametrize(("override", "message"), [
    ("trainer.accumulate=0", "trainer.accumulate: value 0 is not allowed; expected an integer >= 1."),
    ("trainer.ema=1.5", "trainer.ema: value 1.5 is not allowed; expected null or a number in (0, 1), e.g. 0.999."),
    ("trainer.ema=0.0", "trainer.ema: value 0.0 is not allowed; expected null or a number in (0, 1)"),
    ("trainer.profile=-1", "trainer.profile: value -1 is not allowed; expected an integer >= 0."),
    ("trainer.weight_norm_every=-5", "trainer.weight_norm_every: value -5 is not allowed; expected an integer >= 0."),
])
def test_bad_values_are_named(tmp_path, override, message):
    with pytest.raises(ConfigError) as e:
        build_trainer(tmp_path / "run", [override])
    assert message in str(e.value)


def test_weight_norms_follow_their_own_schedule(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def weight_steps(name, every):
        trainer = build_trainer(tmp_path / name, [*PLAIN_MLP, "trainer.tensorboard=true", "data.batch_size=16",
                                                  "trainer.log_every=2", f"trainer.weight_norm_every={every}"])
        trainer.train_epoch(0)
        trainer.writer.close()
        acc = EventAccumulator(str(tmp_path / name))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        grads = {e.step for t in tags if t.startswith("grad/norm/") for e in acc.Scalars(t)}
        return grads, {e.step for t in tags if t.startswith("weight/norm/") for e in acc.Scalars(t)}

    grads, per_epoch = weight_steps("epoch", 0)
    assert grads == set(range(2, 17, 2)) and per_epoch == {2, 16}  # the first log step, then each epoch's end
    assert weight_steps("every", 5)[1] == {2, 8, 14}


# -------------------------------------------------------------- torch.compile
def test_compiled_and_plain_checkpoints_are_interchangeable(tmp_path):
    compiled = build_trainer(tmp_path / "c", [*PLAIN_MLP, "trainer.compile=true"])
    plain = build_trainer(tmp_path / "p", [*PLAIN_MLP, "seed=1"])
    assert hasattr(compiled.model, "_orig_mod")  # built, not run: compiling on CPU takes a C++ build
    state = compiled.checkpoint_state()
    assert not any(k.startswith("_orig_mod.") for k in state.model)
    plain.load_checkpoint(state)
    assert all(torch.equal(v, compiled.raw_model.state_dict()[k]) for k, v in weights(plain).items())
    compiled.load_checkpoint(build_trainer(tmp_path / "q", [*PLAIN_MLP, "seed=2"]).checkpoint_state())
    # A compiled module's own state_dict (other code's checkpoints) loads too, prefix taken off.
    raw = checkpoint.Checkpoint.from_state(dict(state.to_state(), model=compiled.model.state_dict()), tmp_path)
    assert raw.model.keys() == state.model.keys()
    cfg = dict(state.config, trainer=dict(state.config["trainer"], compile=False))
    assert training_differences(state.config, cfg, set()) == []  # a resume may switch compile off or on


# --------------------------------------------------------------- host syncs
class HostSyncs(TorchDispatchMode):
    """Each op that makes the host wait for the device, by the trainer's step: a scalar read
    (.item(), bool(), float()) is aten._local_scalar_dense; .tolist(), .numpy() and .cpu()
    are counted where Python calls them (on CPU they reach no op a GPU would wait on). The
    optimizers' step counters are exempt: torch keeps them on the host on every device."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer, self.by_step = trainer, collections.Counter()
        self.host_counters = [s["step"] for s in trainer.optimizer.state.values() if "step" in s]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten._local_scalar_dense and not any(
                a is c for c in self.host_counters for a in args):
            self.by_step[self.trainer.step] += 1
        return func(*args, **(kwargs or {}))


class HostCopies(TorchFunctionMode):
    def __init__(self, syncs: HostSyncs):
        super().__init__()
        self.syncs = syncs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("tolist", "numpy", "cpu"):
            self.syncs.by_step[self.syncs.trainer.step] += 1
        return func(*args, **(kwargs or {}))


SWITCHES = {"default": ["trainer.tensorboard=true"], "bf16": ["trainer.precision=bf16", "reg.grad_clip=1.0"],
            "ema": ["trainer.ema=0.99"], "accumulate": ["trainer.accumulate=2", "data.batch_size=12",
                                                        "reg.grad_clip=0.5", "reg.grad_clip_mode=value"]}


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=list(SWITCHES))
def test_a_step_makes_no_host_sync_and_a_log_step_one(tmp_path, switches):
    trainer = build_trainer(tmp_path / "run", ["data.sample=256", "data.batch_size=24", "trainer.log_every=3",
                                               "trainer.tensorboard=false", *QUIET, *switches])
    trainer.train_epoch(0)  # the optimizer's state exists from here
    first = trainer.step
    syncs = HostSyncs(trainer)
    with syncs, HostCopies(syncs):
        trainer.train_epoch(1)
    steps = range(first + 1, trainer.step + 1)
    log_steps = {s for s in steps if s % 3 == 0} | {trainer.step}
    assert len(steps) >= 5 and dict(syncs.by_step) == {s: 1 for s in log_steps}


def test_the_train_tally_counts_what_argmax_counts_ties_included():
    """train/acc: a prediction is the first of the largest logits, as torch.argmax picks it
    (all-equal logits, as a zero-initialized last layer gives, predict class 0)."""
    from expkit.training.trainer import TrainTally

    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 3, (16, 5), generator=generator).float(),  # few values: most rows tie
                torch.randint(0, 5, (16,), generator=generator)) for _ in range(40)]
    batches.append((torch.zeros(16, 5), torch.arange(16) % 5))
    tally = TrainTally()
    for step, (logits, y) in enumerate(batches, start=1):
        tally.add(step, torch.nn.functional.cross_entropy(logits, y), logits, y)  # folds every FOLD_EVERY
    tally.to_host()
    assert tally.count == 16 * len(batches)
    assert tally.correct == sum(int((logits.argmax(1) == y).sum()) for logits, y in batches)
    assert len(batches) > TrainTally.FOLD_EVERY  # one fold on the way and one at the end
