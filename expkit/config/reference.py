"""The key reference, generated from what Hydra composes, so it cannot drift: for every
group, every key with its type, the value the default choice composes (other choices'
values beside it) and its description from config/schema.py.

`python -m expkit.config.reference` prints docs/reference.md; `expkit train --help`
prints the same rows; a test checks that the page is current.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from expkit.config.compose import PRIMARY, flatten
from expkit.config.schema import BASES, CHOICE_KEY, SCHEMAS, SINGLE, TOP_LEVEL, type_name

GROUPS = ("data", "model", "optim", "sched", "init", "reg", "trainer", "task")


@dataclass
class Row:
    key: str
    type: str
    help: str
    default: Any = None  # what the default choice of the group composes
    has_default: bool = False  # False: the default choice has no such key
    others: dict[str, Any] = field(default_factory=dict)  # choice -> value where it differs

    def default_text(self) -> str:
        text = _show(self.default) if self.has_default else "-"
        if self.others:
            text += " [" + ", ".join(f"{c}: {_show(v)}" for c, v in self.others.items()) + "]"
        return text


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else "''"
    return str(value).replace("'", "")


def composed_groups() -> tuple[dict[str, str], dict[str, dict[str, dict[str, Any]]]]:
    """(the default choice of each group, group -> choice -> the group's composed values).

    Each choice is its YAML file merged onto the schema it names as its base, which is
    what Hydra composes for `expkit train group=choice` (tests/test_config_reference.py
    checks every choice against Hydra itself); done here without Hydra, so that
    `expkit train --help` answers quickly."""
    from importlib.resources import files

    import yaml
    from omegaconf import OmegaConf

    from expkit.config.schema import base_name

    conf = files("expkit.conf")
    bases = {base_name(schema): schema for group in GROUPS
             for schema in ([BASES[group], *SCHEMAS[group].values()] if group in SCHEMAS else [SINGLE[group]])}
    top = yaml.safe_load((conf / f"{PRIMARY}.yaml").read_text())
    defaults = {g: c for item in top["defaults"] if isinstance(item, dict) for g, c in item.items() if g in GROUPS}
    values: dict[str, dict[str, dict[str, Any]]] = {}
    for group in GROUPS:
        values[group] = {}
        for path in sorted((conf / group).iterdir(), key=lambda p: p.name):
            if not path.name.endswith(".yaml"):
                continue
            own = yaml.safe_load(path.read_text()) or {}
            base = next(d for d in own.pop("defaults", []) if d != "_self_")
            merged = OmegaConf.merge(OmegaConf.structured(bases[base]), own)
            values[group][path.name[: -len(".yaml")]] = OmegaConf.to_container(merged, resolve=True)
    return defaults, values


def hydra_composed_groups() -> dict[str, dict[str, dict[str, Any]]]:
    """group -> choice -> the group's values as Hydra composes `expkit train group=choice`."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from expkit.config.compose import CONFIG_MODULE
    from expkit.config.groups import list_choices

    choices = list_choices()
    values: dict[str, dict[str, dict[str, Any]]] = {}
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        for group in GROUPS:
            values[group] = {c: OmegaConf.to_container(compose("config", overrides=[f"{group}={c}"])[group],
                                                       resolve=True) for c in choices[group]}
    return values


def _fields(schema: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(dotted name, field) of every key, the keys of a nested group (trainer.early_stop.*) included."""
    out = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += _fields(type(default), f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f))
    return out


def key_rows() -> list[Row]:
    """Every key of every group, in schema order; then the top-level keys."""
    defaults, values = composed_groups()
    rows: list[Row] = []
    for group in GROUPS:
        schemas = [BASES[group], *SCHEMAS[group].values()] if group in SCHEMAS else [SINGLE[group]]
        seen: dict[str, Row] = {}
        for schema in schemas:
            for name, f in _fields(schema):
                if name in seen:
                    continue
                choices = f.metadata.get("choices")
                help_ = f.metadata.get("help", "")
                check = f.metadata.get("check")
                if choices and "(" not in help_:
                    help_ += f" ({', '.join(map(str, choices))})"
                elif check is not None and check.allowed not in help_:
                    help_ += f"; {check.allowed}"
                seen[name] = Row(key=f"{group}.{name}", type=type_name(f.type), help=help_)
        flat = {choice: flatten(composed) for choice, composed in values[group].items()}
        for row in seen.values():
            name = row.key.split(".", 1)[1]
            default_values = flat[defaults[group]]
            row.has_default = name in default_values
            row.default = default_values.get(name)
            for choice, composed in flat.items():
                if choice == defaults[group] or name not in composed or (
                        name == CHOICE_KEY.get(group) and composed[name] == choice):
                    continue  # the choice key names the choice: nothing to say
                if not row.has_default or composed[name] != row.default:
                    row.others[choice] = composed[name]
            rows.append(row)
    for group in SINGLE:
        if group in GROUPS:
            continue
        for name, f in _fields(SINGLE[group]):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_, choices = f.metadata.get("help", ""), f.metadata.get("choices")
            help_ += f" ({', '.join(map(str, choices))})" if choices else ""
            rows.append(Row(key=f"{group}.{name}", type=type_name(f.type), help=help_, default=default,
                            has_default=True))
    for name, (typ, help_) in TOP_LEVEL.items():
        rows.append(Row(key=name, type=typ.__name__, help=help_, default=0 if name == "seed" else None,
                        has_default=True))
    return rows


def reference_markdown() -> str:
    """docs/reference.md."""
    defaults, _ = composed_groups()  # fast: no Hydra
    lines = ["# Config key reference", "",
             "Generated by `python -m expkit.config.reference` from what Hydra composes (a test checks it is",
             "current). *default* is the value of the group's default choice; other choices' values are in",
             "brackets where they differ; `-` where the default choice has no such key. Set any key with",
             "`expkit train key=value`; pick a choice with `group=choice`.", "",
             "Default choices: " + ", ".join(f"`{g}={c}`" for g, c in defaults.items()) + ".", "",
             "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for row in key_rows():
        typ = row.type.replace(" | None", " or null").replace("|", "or")
        lines.append(f"| `{row.key}` | {typ} | {row.default_text().replace('|', '/')} | "
                     f"{row.help.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
