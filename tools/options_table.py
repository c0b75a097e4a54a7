"""Print the README's options table from TrainConfig's own metadata (the single source of truth).

    python tools/options_table.py            # print
    python tools/options_table.py --write    # replace the table in README.md
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extensions_lib.config import iter_fields  # noqa: E402

BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"


def table() -> str:
    rows = ["| option | default | allowed | what it does |", "|---|---|---|---|"]
    for section, f in iter_fields():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        m = f.metadata
        allowed = ", ".join(map(str, m["choices"])) if m.get("choices") else (
            f"{m['min']} … {m['max']}" if m.get("min") is not None else "")
        rows.append(f"| `{section}.{f.name}` | `{default!r}` | {allowed} | {m.get('help', '')} |")
    return "\n".join(rows)


def main() -> None:
    text = f"{BEGIN}\n{table()}\n{END}"
    if "--write" in sys.argv:
        readme = ROOT / "README.md"
        body = readme.read_text(encoding="utf-8")
        start, end = body.index(BEGIN), body.index(END) + len(END)
        readme.write_text(body[:start] + text + body[end:], encoding="utf-8")
    else:
        print(text)


if __name__ == "__main__":
    main()
