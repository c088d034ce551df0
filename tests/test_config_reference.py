"""One source of truth for every default: the dataclasses of config/schema.py are the
bases of conf/'s YAML files, which set only what a choice changes; `expkit train --help`
and docs/reference.md show exactly what Hydra composes, per choice."""

from __future__ import annotations

import dataclasses
from importlib.resources import files

import yaml
from conftest import run_cli

from expkit.config.reference import composed_groups, flatten, hydra_composed_groups, key_rows
from expkit.config.schema import CHOICE_KEY, SCHEMAS, SINGLE, base_name, schema_for


def test_documented_values_are_what_hydra_composes_for_every_choice():
    _, documented = composed_groups()
    composed = hydra_composed_groups()
    assert composed.keys() == documented.keys()
    for group, choices in composed.items():
        assert choices.keys() == documented[group].keys(), group
        for choice, values in choices.items():
            assert values == documented[group][choice], f"{group}={choice}"


def test_every_key_row_states_the_default_choices_value():
    defaults, values = composed_groups()
    rows = {row.key: row for row in key_rows()}
    for group, choice in defaults.items():
        for key, value in flatten(values[group][choice]).items():
            row = rows[f"{group}.{key}"]
            assert row.has_default and row.default == value, row
        for other, composed in values[group].items():
            for key, value in flatten(composed).items():
                row = rows[f"{group}.{key}"]
                shown = row.others.get(other, row.default if row.has_default else None)
                assert shown == value or (key == CHOICE_KEY.get(group) and value == other), (other, row)


def test_yaml_files_set_only_what_their_choice_changes():
    conf = files("expkit.conf")
    for group in ("data", "model", "optim", "sched", "init", "reg", "trainer", "task"):
        for path in (conf / group).iterdir():
            if not path.name.endswith(".yaml"):
                continue
            own = yaml.safe_load(path.read_text()) or {}
            schema = schema_for(group, own[CHOICE_KEY[group]]) if group in CHOICE_KEY else SINGLE[group]
            # Besides its base, a choice may only pick other groups' choices (data=diabetes: task, model).
            defaults = [d for d in own.pop("defaults") if not (isinstance(d, dict) and all(
                k.startswith("override /") and "@_global_." in k for k in d))]
            assert defaults == [base_name(schema), "_self_"], path
            fields = {f.name: f for f in dataclasses.fields(schema)}
            for key, value in own.items():
                f = fields[key]
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                assert key == CHOICE_KEY.get(group) or value != default, f"{path.name}: {key} repeats the default"


def test_every_choice_has_a_schema():
    for group in CHOICE_KEY:
        for choice, schema in SCHEMAS[group].items():
            assert dataclasses.is_dataclass(schema), (group, choice)


def test_train_help_shows_the_composed_defaults_per_choice(tmp_path):
    proc = run_cli(["train", "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ") and line.split()}
    assert "0.001" in lines["optim.lr"] and "sgd: 0.05" in lines["optim.lr"]
    assert "multistep: [5, 8]" in lines["sched.milestones"]
    assert "0.2" in lines["reg.dropout"] and "none: 0.0" in lines["reg.dropout"]
    assert "batch" in lines["reg.norm"] and "none: none" in lines["reg.norm"]
    assert lines["data.val_fraction"].split()[2] == "0.2"
