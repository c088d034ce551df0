"""Compose conf/ with Hydra outside `@hydra.main` (the Python API, `expkit sched`, the
checks `expkit train` makes before Hydra runs), and the config's plain forms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from expkit.config import resolvers
from expkit.errors import ConfigError

CONFIG_MODULE = "expkit.conf"
PRIMARY = "config"  # conf/config.yaml: the defaults list every composition starts from
resolvers.register()


def task_config(cfg: DictConfig) -> DictConfig:
    """The config without Hydra's own `hydra` node."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: {"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; an empty
    mapping below the top ({"kwargs": {}}) is a value of its own."""
    if not isinstance(node, dict) or (not node and prefix):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def upgrade_saved(cfg: DictConfig) -> DictConfig:
    """A run folder's config.yaml written by an older expkit: keys whose new default would
    change what that run did get the value it had. Runs from before data.test_fraction
    trained on every example of a data set without a test split. Before reg.batchnorm
    became an alias, a reg.norm that was set won over it (reg=none reg.norm=batch saved
    batchnorm: false beside norm: batch); the alias is dropped there so the norm still wins."""
    data = cfg.get("data")
    if OmegaConf.is_dict(data) and "test_fraction" not in data:
        with open_dict(cfg):
            cfg.data.test_fraction = 0.0
    reg = cfg.get("reg")
    if OmegaConf.is_dict(reg) and isinstance(reg.get("batchnorm"), bool) and reg.get("norm") is not None:
        cfg.reg.batchnorm = None
    return cfg


def compose(overrides: list[str], config_dir: str | None = None, hydra: bool = False) -> DictConfig:
    """conf/config.yaml with `overrides` (and a user's extra config folder), as Hydra
    composes it for `expkit train`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    if config_dir:
        check_config_dir(config_dir)
    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(PRIMARY, overrides=[*overrides, *extra], return_hydra_config=hydra)


# ------------------------------------------------------------------ checking overrides
MAX_CHECKED_JOBS = 64  # a sweep's jobs composed before it starts; the rest are checked as they run


# Keys that say how long and how a run goes on, not what it trains: a resume may change them
# without --force, and a checkpoint whose config differs from its run's only in these (or in
# the run's name, the device, the sweep's settings) is still that run's.
SAFE_KEYS = {
    "trainer.epochs", "trainer.eval_every", "trainer.log_every", "trainer.devices",
    "trainer.progress", "trainer.verbose", "trainer.keep_last", "trainer.checkpoint", "trainer.histogram_every",
    "trainer.max_steps", "trainer.num_threads", "trainer.graph", "trainer.tensorboard", "data.num_workers",
    "trainer.test_at_end", "trainer.early_stop.patience", "trainer.early_stop.min_delta",
    # the same weights either way (compile), or only what is measured and logged
    "trainer.compile", "trainer.profile", "trainer.weight_norm_every",
}
NOT_TRAINING = SAFE_KEYS | {"name", "trainer.accelerator", "trainer.untracked_max_kb", "sweep.resume",
                            "sweep.metric", "data.root"}  # data.root: the same data moved is the same data


def training_differences(checkpoint_config: Any, run_config: dict[str, Any], allowed: set[str]) -> list[str]:
    """'key: A in the checkpoint, B in the run' for each key, set in both, where the config a
    checkpoint was trained with differs from the run's in what shaped training; `allowed`:
    keys the user changes on purpose (this command's overrides)."""
    from expkit.config.schema import resolve_norm

    if not isinstance(checkpoint_config, dict):
        return []  # a checkpoint written before it recorded its config: nothing to compare
    old = flatten(OmegaConf.to_container(upgrade_saved(OmegaConf.create(checkpoint_config)), resolve=False))
    new = flatten(run_config)
    for side in (old, new):  # the norm that trained, however each config asked for it
        if "reg.norm" in side or "reg.batchnorm" in side:
            norm = resolve_norm(side.get("reg.norm"), side.get("reg.batchnorm"))
            side["reg.norm"], side["reg.batchnorm"] = norm, norm == "batch"
    skip = NOT_TRAINING | allowed
    return [f"{k}: {old[k]!r} in the checkpoint, {new[k]!r} in the run" for k in sorted(set(old) & set(new))
            if k not in skip and not any(k.startswith(a + ".") for a in allowed) and old[k] != new[k]]


def with_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """`key=value` (and `+key=value`) overrides applied to a saved config, each value read as
    Hydra reads it on a command line: `off` stays the text off, `1e-3` is a number, `null`
    is None, `[1,2]` a list. (OmegaConf's dotlist would read YAML 1.1: off as false.)"""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        reason = (getattr(e, "message", "") or str(e)).splitlines()[0]
        raise ConfigError(f"override {getattr(e, 'override', '') or ''!r} is malformed: {reason}.") from None
    cfg = cfg.copy()
    for o in parsed:
        if o.is_sweep_override():
            raise ConfigError(f"{o.key_or_group}: value {o.input_line.split('=', 1)[-1]!r} is a sweep; give one "
                              "value.")
        try:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=o.is_add())
        except Exception as e:
            raise ConfigError(f"{o.input_line}: {str(e).splitlines()[0]}") from None
    return cfg


def is_multirun(args: list[str]) -> bool:
    return any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args)


def split_command_line(args: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, the overrides) of a command line given in any
    order (`trainer.epochs=1 --config-dir DIR a=2`): argparse, which Hydra uses, takes the
    overrides only as one run of words, so expkit hands them to Hydra after the flags."""
    from hydra._internal.utils import get_args_parser

    actions = {s: a for a in get_args_parser()._actions for s in a.option_strings}
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        action = actions.get(word) if word.startswith("-") else None
        if word.startswith("-"):
            flags.append(word)
            takes = action is not None and (action.nargs is None or (
                action.nargs == "?" and i + 1 < len(args) and args[i + 1] in (action.choices or ())))
            if takes and i + 1 < len(args):
                flags.append(args[i + 1])
                i += 1
        else:
            overrides.append(word)
        i += 1
    return flags, overrides


def hydra_overrides(args: list[str]) -> list[str]:
    """The overrides of a Hydra command line (what is not a flag or a flag's value)."""
    return split_command_line(args)[1]


def check_overrides(overrides: list[str], config_dirs: list[str] | tuple[str, ...] = (), multirun: bool = False,
                    hydra: bool = False) -> DictConfig:
    """Compose and validate what `expkit train OVERRIDES` would run, before anything is made;
    the first job's config. Raises ConfigError naming the key, the value and what is
    allowed: a malformed override, an unknown choice, a key the chosen option does not
    have, a value of the wrong type or (one run) out of range. A sweep has each choice of
    each swept group composed once (up to MAX_CHECKED_JOBS jobs); a swept key's other
    values are then set on each composed config as Hydra sets them (`_check_values`),
    which refuses what composing them would, in a fraction of a composition."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from expkit.config.groups import list_choices
    from expkit.config.schema import validate
    from expkit.errors import did_you_mean

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        reason = (getattr(e, "message", "") or str(e)).splitlines()[0]
        override = getattr(e, "override", "") or ""
        raise ConfigError(f"override {override!r} is malformed: {reason}. Write key=value, group=choice, or "
                          "key=a,b with -m; quote values that hold brackets or commas.") from None
    choices = list_choices(config_dirs)
    jobs: list[list[str]] = [[]]
    swept_keys: list[tuple[str, list[str]]] = []  # (key, its values after the first)
    for o in parsed:
        if o.is_sweep_override() and not multirun:
            raise ConfigError(f"{o.key_or_group}: value {o.input_line.split('=', 1)[-1]!r} is a sweep; add -m to run "
                              "one job per value, or give one value.")
        values = _values(o)
        if o.key_or_group in choices and not o.is_delete() and values is not None:
            unknown = [v for v in values if v not in choices[o.key_or_group]]
            if unknown:
                hint = did_you_mean(unknown[0], choices[o.key_or_group])
                raise ConfigError(f"{o.key_or_group}: value {unknown[0]!r} is not a known {o.key_or_group} choice"
                                  f"{hint + ' Choose' if hint else '; choose'} one of "
                                  f"{', '.join(choices[o.key_or_group])}.")
        if values is None or not o.is_sweep_override():
            jobs = [[*job, o.input_line] for job in jobs]
            continue
        key = o.get_key_element()
        first = [[*job, f"{key}={values[0]}"] for job in jobs]
        if _value_only(o, choices):
            swept_keys.append((key, values[1:]))
            jobs = first
            continue
        others = [[*jobs[0], f"{key}={v}"] for v in values[1:]]
        jobs = first + others
    first_cfg = None
    for job in jobs[:MAX_CHECKED_JOBS]:
        cfg = _compose_checked(job, config_dirs, hydra)
        _check_values(cfg, swept_keys, config_dirs)
        if not multirun:  # a sweep job with a bad value fails on its own; the other jobs still run
            validate(task_config(cfg))
        first_cfg = first_cfg if first_cfg is not None else cfg
    return first_cfg


def _value_only(o, choices: dict[str, list[str]]) -> bool:
    """A swept key whose values change no structure (not a group, not hydra's, not + or ~),
    so one composition stands for all of them."""
    key = o.key_or_group
    return (key not in choices and o.package is None and not key.startswith("hydra.")
            and not (o.is_add() or o.is_force_add() or o.is_delete()))


def _check_values(cfg: DictConfig, swept_keys: list[tuple[str, list[str]]], config_dirs) -> None:
    """Each other value of each swept key, set on a copy of a composed job's config with
    OmegaConf.update(merge=True), which is what Hydra's composition does with a value
    override: a value a typed key cannot hold is refused with the message composing gives."""
    if not swept_keys:
        return
    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    probe = copy.deepcopy(cfg)
    lines = [f"{key}={v}" for key, values in swept_keys for v in values]
    for line, o in zip(lines, OverridesParser.create().parse_overrides(lines), strict=True):
        try:
            OmegaConf.update(probe, o.key_or_group, o.value(), merge=True)
        except OmegaConfBaseException as e:
            error = ConfigCompositionException(f"Error merging override {line}")
            error.__cause__ = e
            raise ConfigError(explain_compose_error(error, [line], config_dirs[-1] if config_dirs else None)) from None


def _values(o) -> list[str] | None:
    """The values an override stands for as strings (several for a sweep, each written as
    an override's value, as Hydra's basic sweeper writes its jobs' overrides); None when they
    cannot be listed before the sweeper runs (glob()). An interval() stands for its two
    ends: the sweeper picks values between them, so each end is checked as a value."""
    from hydra.core.override_parser.types import IntervalSweep

    if not o.is_sweep_override():
        value = o.value()
        return [value] if isinstance(value, str) else [o.get_value_element_as_str()]
    if isinstance(o.value(), IntervalSweep):
        return [str(o.value().start), str(o.value().end)]
    try:
        return [str(v) for v in o.sweep_string_iterator()]
    except Exception:
        return None


def _compose_checked(overrides: list[str], config_dirs, hydra: bool) -> DictConfig:
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_dir = config_dirs[-1] if config_dirs else None
    try:
        return compose(overrides, config_dir, hydra=hydra)
    except yaml.YAMLError as e:  # a YAML file of the user's config folder
        mark = getattr(e, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a YAML file"
        raise ConfigError(f"--config-dir: {where} is not valid YAML: {getattr(e, 'problem', None) or e}.") from None
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(explain_compose_error(e, overrides, config_dir)) from None


def check_config_dir(config_dir: str) -> None:
    """A user's --config-dir: a folder, and without a config.yaml at its top, which Hydra
    would never read (expkit's own conf/config.yaml is the primary config)."""
    folder = Path(config_dir)
    if not folder.is_dir():
        raise ConfigError(f"--config-dir: value {config_dir!r} is not a folder "
                          f"({'it is a file' if folder.exists() else 'it does not exist'}).")
    if (folder / f"{PRIMARY}.yaml").exists():
        raise ConfigError(f"--config-dir: {folder / (PRIMARY + '.yaml')} would never be read: expkit's own "
                          f"{PRIMARY}.yaml is the primary config. Put your choices in group folders "
                          f"({folder}/model/NAME.yaml, then model=NAME) or an experiment preset "
                          f"({folder}/experiment/NAME.yaml, then +experiment=NAME).")


def explain_compose_error(error: Exception, overrides: list[str], config_dir: str | None) -> str:
    """One line from Hydra's composition error: the key, the value and what is allowed."""
    import re

    cause = error.__cause__ or error.__context__
    text = f"{error}\n{cause or ''}"
    m = (re.search(r"Could not override '([^']+)'", text) or re.search(r"Error merging override ([^=\s]+)=", text)
         or re.search(r"Could not append to config\. An item is already at '([^']+)'", text))
    if m:
        key = m.group(1)
        value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), "?")
        reason = (str(cause).splitlines() or [""])[0] if cause is not None else ""
        if "not in struct" in text or re.search(r"Key '[^']+' not in '", text):
            return missing_key_message(key, value, overrides, config_dir)
        if "already at" in text:
            return f"{key}: already a key (value {value!r}); set it with {key}={value} (without +)."
        typed = re.search(r"could not be converted to (\w+)", text)
        if typed:
            names = {"Integer": "int", "Float": "float", "Boolean": "bool", "String": "str"}
            return f"{key}: value {value!r} is not of type {names.get(typed.group(1), typed.group(1))}."
        return f"{key}: value {value!r} is not allowed: {reason or text.splitlines()[-1]}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[:2]) if lines else type(error).__name__


def missing_key_message(key: str, value: str, overrides: list[str], config_dir: str | None) -> str:
    """`optim.momentum=0.9` with optim=adam: which choices of the group have that key."""
    import dataclasses

    from expkit.config.schema import CHOICE_KEY, SCHEMAS, SINGLE
    from expkit.errors import closest, did_you_mean

    group, _, name = key.partition(".")
    if group in CHOICE_KEY and name and "." not in name:
        groups_only = [o for o in overrides if "." not in o.split("=", 1)[0].lstrip("+~")]
        try:
            chosen = compose(groups_only, config_dir, hydra=True).hydra.runtime.choices.get(group)
        except Exception:
            chosen = None
        having = sorted(c for c, schema in SCHEMAS[group].items()
                        if name in {f.name for f in dataclasses.fields(schema)})
        schema = SCHEMAS[group].get(chosen)
        keys = sorted(f.name for f in dataclasses.fields(schema)) if schema else []
        if having:
            return (f"{key}: not a key of {group}={chosen} (value {value!r}); {group}={', '.join(having)} "
                    f"{'has' if len(having) == 1 else 'have'} it. Keys of {group}={chosen}: {', '.join(keys)}.")
        hint = did_you_mean(name, keys, f"{group}.")
        near = None if hint else closest(name, group_keys(group))
        if near:  # a typo of a key another choice has: optim.momentun with optim=adam
            owners = sorted(c for c, schema in SCHEMAS[group].items()
                            if near in {f.name for f in dataclasses.fields(schema)})
            hint = f"; did you mean {group}.{near} (with {group}={', '.join(owners)})?"
        return f"{key}: unknown key (value {value!r}){hint or '.'} Keys of {group}={chosen}: {', '.join(keys)}."
    if group in SINGLE and name:
        schema, where = SINGLE[group], group
        *parents, _ = name.split(".")
        for part in parents:  # a nested group of keys, e.g. trainer.early_stop
            f = next((f for f in dataclasses.fields(schema) if f.name == part), None)
            default = f.default_factory() if f is not None and f.default_factory is not dataclasses.MISSING else None
            if not dataclasses.is_dataclass(default):
                break
            schema, where = type(default), f"{where}.{part}"
        else:
            keys = sorted(f.name for f in dataclasses.fields(schema))
            hint = did_you_mean(name.rpartition(".")[2], keys, f"{where}.")
            return f"{key}: unknown key (value {value!r}){hint or '.'} Keys of {where}: {', '.join(keys)}."
    top = sorted([*CHOICE_KEY, *SINGLE, "seed", "name"])
    if "." not in key:
        hint = did_you_mean(key, top)
        return f"{key}: unknown key (value {value!r}){hint or '.'} Top-level keys: {', '.join(top)}."
    near_group = closest(group, [*CHOICE_KEY, *SINGLE]) if group not in (*CHOICE_KEY, *SINGLE) else None
    head, _, rest = name.partition(".")
    near_key = head if head in group_keys(near_group or "") else closest(head, group_keys(near_group or ""))
    if near_group and near_key:  # a mistyped group, traner.epochs: the key it was meant for, not a new one
        meant = ".".join([near_group, near_key, *([rest] if rest else [])])
        return f"{key}: unknown key (value {value!r}); did you mean {meant}? Top-level keys: {', '.join(top)}."
    return f"{key}: unknown key (value {value!r}); add a new key with +{key}={value}."


def group_keys(group: str) -> set[str]:
    """Every key a group's choices have (trainer's own for the groups without choices)."""
    import dataclasses

    from expkit.config.schema import SCHEMAS, SINGLE

    schemas = list(SCHEMAS.get(group, {}).values()) or ([SINGLE[group]] if group in SINGLE else [])
    return {f.name for schema in schemas for f in dataclasses.fields(schema)}
