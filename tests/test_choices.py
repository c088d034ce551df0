"""Every choice of every config group composes, builds and trains a few steps; the init
schemes, schedulers and clipping do what they promise; bad values are refused."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import read_json, run_cli, scalars
from omegaconf import OmegaConf

import expkit
from expkit.config.compose import check_overrides, task_config
from expkit.config.groups import list_choices
from expkit.config.schema import validate
from expkit.errors import ConfigError
from expkit.run.jobs import lr_per_step

FEW_STEPS = ["data.sample=64", "data.batch_size=16", "trainer.epochs=1", "trainer.max_steps=2",
             "trainer.progress=off", "trainer.graph=false", "trainer.checkpoint=false"]
CHOICES = list_choices()
# Data sets that need files on disk are covered in test_data.py.
OFFLINE_DATA = {"digits", "synthetic"}


def compose_typed(overrides: list[str]) -> dict:
    """What `expkit train OVERRIDES` checks before anything is made, as typed dataclasses."""
    return validate(task_config(check_overrides(overrides)))


def choice_params():
    for group in ("model", "optim", "sched", "init", "reg", "data", "trainer"):
        for choice in CHOICES[group]:
            if group == "data" and choice not in OFFLINE_DATA | {"python"}:
                continue
            yield pytest.param(group, choice, id=f"{group}={choice}")


def _tiny_model(input_shape, num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), num_classes))


def _tiny_init(m):
    if isinstance(m, torch.nn.Linear):
        torch.nn.init.orthogonal_(m.weight)


# Own-code choices (model=python, data=python, init=function), here as the Python API's objects.
OWN_CODE = {("model", "python"): {"model": _tiny_model}, ("init", "function"): {"init": _tiny_init},
            ("data", "python"): {"data": (torch.rand(80, 1, 8, 8), torch.randint(0, 3, (80,)))}}


@pytest.mark.parametrize("group, choice", list(choice_params()))
def test_every_choice_composes_builds_and_trains(tmp_path, group, choice):
    extra = ["data.shape=[1,8,8]", "data.size=64"] if choice == "synthetic" else []
    own = OWN_CODE.get((group, choice), {})
    pick = [] if own else [f"{group}={choice}"]
    run_dir, metrics = expkit.train([*pick, *FEW_STEPS, *extra], runs_root=str(tmp_path / "runs"), **own)
    assert metrics["step"] == 2
    assert read_json(run_dir / "meta.json")["status"] == "completed"
    assert OmegaConf.load(run_dir / "config.yaml")[group] is not None


def test_registries_and_conf_agree():
    from expkit.config.registry import MODELS
    from expkit.config.schema import SCHEMAS

    assert set(MODELS.names()) == {OmegaConf.load(f"conf/model/{c}.yaml").arch for c in CHOICES["model"]}
    for group in ("data", "sched"):
        assert {OmegaConf.load(f"conf/{group}/{c}.yaml").name for c in CHOICES[group]} <= set(SCHEMAS[group])


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "gelu", "tanh", "sigmoid"])
def test_every_activation_everywhere(activation):
    from expkit.models import build_model

    for arch in ("mlp", "cnn", "resnet"):
        typed = compose_typed([f"model={arch}", f"model.activation={activation}"])
        model = build_model(typed["model"], typed["reg"], (1, 8, 8), 10)
        assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_batchnorm_removes_conv_bias_and_sits_before_the_activation():
    from expkit.models import build_model

    typed = compose_typed(["model=cnn", "reg.batchnorm=true"])
    layers = list(build_model(typed["model"], typed["reg"], (1, 8, 8), 10))
    convs = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(layers[i].bias is None for i in convs)
    assert all(isinstance(layers[i + 1], torch.nn.BatchNorm2d) and isinstance(layers[i + 2], torch.nn.ReLU)
               for i in convs)
    typed = compose_typed(["model=cnn", "reg.batchnorm=false"])
    layers = list(build_model(typed["model"], typed["reg"], (1, 8, 8), 10))
    assert all(m.bias is not None for m in layers if isinstance(m, torch.nn.Conv2d))


def test_dropout_is_inactive_in_eval_mode():
    from expkit.models import build_model

    typed = compose_typed(["model=mlp", "reg.dropout=0.5", "reg.batchnorm=false"])
    model = build_model(typed["model"], typed["reg"], (1, 8, 8), 10)
    x = torch.randn(32, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_resnet_skip_switch():
    from expkit.models import build_model
    from expkit.models.resnet import BasicBlock

    for skip in (True, False):
        typed = compose_typed(["model=resnet", f"model.skip={str(skip).lower()}"])
        model = build_model(typed["model"], typed["reg"], (3, 32, 32), 10)
        blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
        assert len(blocks) == 6 and all(b.skip is skip for b in blocks)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_model_adapts_channels_and_classes():
    from expkit.models import build_model

    typed = compose_typed(["model=tv", "model.name=resnet18"])
    model = build_model(typed["model"], typed["reg"], (1, 28, 28), 7)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    typed = compose_typed(["model=tv", "model.name=resnet1888"])
    with pytest.raises(ConfigError, match="model.name: value 'resnet1888'"):
        build_model(typed["model"], typed["reg"], (1, 28, 28), 7)


# ------------------------------------------------------------------------- init
def _layer(scheme: str, extra=()):
    from expkit.training.init import apply_init

    typed = compose_typed([f"init={scheme}", *extra])
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(2048, 1024))
    apply_init(layer, typed["init"], "relu")
    return layer[0]


@pytest.mark.parametrize("scheme, expected_std", [
    ("kaiming_normal", math.sqrt(2 / 2048)),
    ("kaiming_uniform", math.sqrt(2 / 2048)),
    ("xavier_normal", math.sqrt(2 / (2048 + 1024))),
    ("xavier_uniform", math.sqrt(2 / (2048 + 1024))),
])
def test_init_statistics(scheme, expected_std):
    layer = _layer(scheme)
    assert layer.weight.std().item() == pytest.approx(expected_std, rel=0.03)
    assert abs(layer.weight.mean().item()) < 0.05 * expected_std
    assert torch.count_nonzero(layer.bias) == 0


def test_kaiming_follows_mode_and_the_models_activation():
    layer = _layer("kaiming_normal", ["init.mode=fan_out"])
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.03)
    from expkit.training.init import apply_init

    typed = compose_typed(["init=kaiming_normal"])
    layer = torch.nn.Linear(2048, 1024)
    apply_init(layer, typed["init"], "tanh")
    assert layer.weight.std().item() == pytest.approx((5 / 3) / math.sqrt(2048), rel=0.03)


def test_orthogonal_and_custom_rules():
    layer = _layer("orthogonal")
    w = layer.weight
    assert torch.allclose(w @ w.T, torch.eye(1024), atol=1e-4)
    from expkit.training.init import apply_init

    typed = compose_typed(["init=custom", "init.bias=0.5", "init.norm_weight=2.0"])
    model = torch.nn.Sequential(torch.nn.Conv2d(64, 256, 3), torch.nn.BatchNorm2d(256), torch.nn.Flatten(),
                                torch.nn.Linear(1024, 512))
    apply_init(model, typed["init"], "relu")
    conv, bn, _, lin = model
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)  # conv: kaiming
    assert lin.weight.std().item() == pytest.approx(math.sqrt(2 / (1024 + 512)), rel=0.05)  # linear: xavier
    assert torch.all(bn.weight == 2.0) and torch.all(bn.bias == 0.0)
    assert torch.all(conv.bias == 0.5) and torch.all(lin.bias == 0.5)


# --------------------------------------------------------------------- schedulers
def _our_lrs(sched: list[str], epochs: int, spe: int, lr: float = 0.1) -> list[float]:
    from expkit.training.sched import simulate

    typed = compose_typed(["optim=sgd", f"optim.lr={lr}", f"trainer.epochs={epochs}", *sched])
    return simulate(typed["sched"], typed["optim"], epochs, spe)


def _torch_lrs(make, epochs: int, spe: int, per_step: bool, lr: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    sched = make(opt)
    out = []
    for _ in range(epochs):
        for _ in range(spe):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_step:
                sched.step()
        if not per_step:
            sched.step()
    return out


S = torch.optim.lr_scheduler


@pytest.mark.parametrize("sched, make, per_step", [
    (["sched=step", "sched.step_size=3", "sched.gamma=0.5"], lambda o: S.StepLR(o, 3, 0.5), False),
    (["sched=multistep", "sched.milestones=[2,5]"], lambda o: S.MultiStepLR(o, [2, 5], 0.1), False),
    (["sched=exponential", "sched.gamma=0.8"], lambda o: S.ExponentialLR(o, 0.8), False),
    (["sched=cosine"], lambda o: S.CosineAnnealingLR(o, T_max=8), False),
    (["sched=onecycle"], lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=8 * 5), True),
    (["sched=none"], lambda o: S.LambdaLR(o, lambda e: 1.0), False),
], ids=["step", "multistep", "exponential", "cosine", "onecycle", "none"])
def test_scheduler_lr_equals_torch(sched, make, per_step):
    ours = _our_lrs(sched, epochs=8, spe=5)
    theirs = _torch_lrs(make, epochs=8, spe=5, per_step=per_step)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)


def test_plateau_steps_after_evaluation():
    ours = _our_lrs(["sched=plateau", "sched.patience=1", "sched.factor=0.5"], epochs=6, spe=2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = S.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
    theirs = []
    for _ in range(6):
        theirs += [opt.param_groups[0]["lr"]] * 2
        sched.step(math.inf)
    assert ours == pytest.approx(theirs)


def test_warmup_then_cosine():
    spe, epochs, lr = 10, 8, 0.1
    ours = _our_lrs(["sched=cosine", "sched.warmup_epochs=2"], epochs, spe, lr)
    assert ours[:20] == pytest.approx([lr * (i + 1) / 20 for i in range(20)])
    cosine = _torch_lrs(lambda o: S.CosineAnnealingLR(o, T_max=6), 6, spe, False, lr)
    assert ours[20:] == pytest.approx(cosine)


def test_lr_points_give_every_steps_lr(tmp_path):
    """opt/lr is written at log steps and where the LR changes, not every step; every step's
    LR follows from those points and is the schedule's (warmup per step, then per epoch)."""
    sched = ["sched=step", "sched.step_size=1", "sched.gamma=0.5", "sched.warmup_epochs=1"]
    run_dir, _ = expkit.train(["model=mlp", "model.width=16", "optim=sgd", "optim.lr=0.1", *sched,
                               "trainer.log_every=100", "data.sample=64", "data.batch_size=16", "trainer.epochs=4",
                               "trainer.progress=off", "trainer.graph=false", "trainer.checkpoint=false"],
                              runs_root=str(tmp_path / "runs"))
    steps = read_json(run_dir / "metrics.json")["step"]
    points = scalars(run_dir)["opt/lr"]
    assert lr_per_step(points, steps) == pytest.approx(_our_lrs(sched, 4, steps // 4), rel=1e-6)  # float32 events
    assert len(points) < steps


def test_grad_clip_bounds_the_norm(tmp_path):
    common = ["model=mlp", "optim=sgd", "optim.lr=0.5", "trainer.log_every=1", "data.sample=64", "data.batch_size=16",
              "trainer.epochs=2", "trainer.max_steps=6", "trainer.progress=off", "trainer.graph=false"]
    """grad/norm_clipped is what the optimizer got; grad/norm (and grad/norm/<layer>) what the
    backward pass gave before clipping, so clipping never hides how large the gradients are."""
    run_dir, _ = expkit.train([*common, "reg.grad_clip=0.05"], runs_root=str(tmp_path / "runs"))
    tags = scalars(run_dir)
    clipped = [v for _, v in tags["grad/norm_clipped"]]
    assert len(clipped) == 6 and max(clipped) <= 0.05 * 1.0001
    before = [v for _, v in tags["grad/norm"]]
    assert len(before) == 6 and min(before) > 0.05  # the unclipped norms, above the bound
    layers = [t for t in tags if t.startswith("grad/norm/")]
    first = math.sqrt(sum(tags[t][0][1] ** 2 for t in layers))
    assert abs(first - before[0]) <= 1e-4 * before[0]  # per layer: before clipping too
    unclipped, _ = expkit.train(common, runs_root=str(tmp_path / "runs0"))
    assert "grad/norm_clipped" not in scalars(unclipped)  # nothing clipped, nothing to log twice
    # Value clipping bounds every element, so the norm of n weights is at most clip * sqrt(n).
    run_dir, _ = expkit.train([*common, "reg.grad_clip=0.0001", "reg.grad_clip_mode=value"],
                              runs_root=str(tmp_path / "runs2"))
    n_weights = 64 * 256 + 2 * 256 * 256 + 256 * 10
    assert max(v for _, v in scalars(run_dir)["grad/norm_clipped"]) <= 0.0001 * math.sqrt(n_weights) * 1.0001


def test_weight_decay_skips_biases_and_norms_unless_asked():
    from expkit.training.optim import build_optim

    typed = compose_typed(["optim=adamw", "optim.weight_decay=0.1"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    groups = build_optim(model, typed["optim"]).param_groups
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(1, 0.1), (3, 0.0)]
    typed = compose_typed(["optim=adamw", "optim.weight_decay=0.1", "optim.decay_norm_and_bias=true"])
    groups = build_optim(model, typed["optim"]).param_groups
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(4, 0.1)]


def test_any_torch_optimizer_by_name_with_its_arguments(tmp_path):
    _, metrics = expkit.train(["optim=torch", "optim.name=Adagrad", "+optim.kwargs.lr_decay=0.01", *FEW_STEPS],
                              runs_root=str(tmp_path / "runs"))
    assert metrics["step"] == 2
    from expkit.training.optim import build_optim

    typed = compose_typed(["optim=torch", "optim.name=Adagrad", "+optim.kwargs.bogus=1"])
    with pytest.raises(ConfigError, match="optim.kwargs.bogus: Adagrad takes no argument 'bogus'"):
        build_optim(torch.nn.Linear(2, 2), typed["optim"])
    typed = compose_typed(["optim=torch", "optim.name=Adagradd"])
    with pytest.raises(ConfigError, match="optim.name: value 'Adagradd' is not an optimizer"):
        build_optim(torch.nn.Linear(2, 2), typed["optim"])


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=0"], "optim.lr: value 0"),
    (["reg.dropout=-0.1"], "reg.dropout: value -0.1"),
    (["sched=step", "sched.gamma=0"], "sched.gamma: value 0"),
    (["sched=multistep", "sched.milestones=[3,3]"], "sched.milestones: value [3, 3]"),
    (["model=mlp", "model.depth=x"], "model.depth: value 'x' is not of type int"),
    (["model.activation=swish"], "model.activation: value 'swish' is not allowed; choose one of relu"),
    (["+model.depth=3"], "model.depth: unknown key"),
    (["optim=sgd", "optim.nesterov=true", "optim.momentum=0"], "optim.nesterov"),
    (["sched=cosine", "sched.warmup_epochs=20"], "sched.warmup_epochs: value 20"),
])
def test_validation_names_key_value_and_allowed(overrides, message):
    with pytest.raises(ConfigError) as e:
        compose_typed(overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=1e-3,abc"], "optim.lr: value 'abc' is not of type float."),
    (["trainer.epochs=1,2,2.5"], "trainer.epochs: value '2.5' is not of type int."),
    (["optim=sgd,rmsprop", "optim.momentum=0.9,x"], "optim.momentum: value 'x' is not of type float."),
    (["optim.lr=0.01,0.1", "optim=sgd,adam", "optim.momentum=0.9"], "optim.momentum: not a key of optim=adam"),
    (["optim.betas=[0.9,0.99],abc"], "optim.betas: value 'abc' is not allowed"),
    (["model.nope=1,2"], "model.nope: unknown key"),
    (["optim.lr=1e-3,${optim.weight_decay}", "name='a b','c,d'", "optim.betas=[0.9,0.99],[0.8,0.9]"], None),
])
def test_a_sweeps_values_are_checked_before_it_starts(overrides, message):
    # A swept key composes once and its other values are set on that config as Hydra sets
    # them; values written as Hydra writes them (interpolations, quoted text, lists) pass.
    if message is None:
        assert check_overrides(overrides, multirun=True).name == "a b"
        return
    with pytest.raises(ConfigError) as e:
        check_overrides(overrides, multirun=True)
    assert message in str(e.value)


def test_expkit_sched_draws_the_schedule(tmp_path):
    out = tmp_path / "lr.png"
    proc = run_cli(["sched", "sched=cosine", "sched.warmup_epochs=2", "--out", str(out)], cwd=tmp_path, check=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("step")]
    lrs = {int(line.split()[1]): float(line.split()[-1]) for line in lines}
    spe = int(proc.stdout.split("steps/epoch=")[1].split()[0])
    assert lrs[0] == pytest.approx(0.001 / (2 * spe), rel=1e-5)  # warmup starts near zero
    assert lrs[2 * spe] == pytest.approx(0.001, rel=1e-5)  # reaches optim.lr when warmup ends
    assert max(lrs.values()) <= 0.001 + 1e-12
