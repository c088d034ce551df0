"""The README's key reference, generated from schema.py so it cannot drift:
`python -m expkit.docs` prints it, and a test checks the README holds it verbatim."""

from __future__ import annotations

from expkit.schema import key_reference

BEGIN, END = "<!-- keys:begin (python -m expkit.docs) -->", "<!-- keys:end -->"


def reference_markdown() -> str:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for k, typ, default, help_ in key_reference():
        typ = typ.replace(" | None", " or null").replace("|", "or")
        default = default.replace("None", "null") if default else ""
        rows.append(f"| `{k}` | {typ} | {f'`{default}`' if default else ''} | {help_.replace('|', '/')} |")
    return "\n".join([BEGIN, *rows, END])


if __name__ == "__main__":
    print(reference_markdown())
