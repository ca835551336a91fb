"""training/eval/expected.yaml is the data of the README's result tables: they must agree cell by cell, and the
recorded figures must clear the floors kept beside them. No artifacts needed."""
from __future__ import annotations

from pathlib import Path

import pytest

from training.eval.expected import expected, row

ROOT = Path(__file__).resolve().parents[2]
CONDITIONS = [c["name"] for c in expected()["conditions"]]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def readme_table(heading: str) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of the first table under the README heading `heading` (before the next heading)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert heading in lines, f"README has no heading {heading!r}"
    n = lines.index(heading) + 1
    while not lines[n].startswith("|"):
        assert not lines[n].startswith("#"), f"no table under {heading!r}"
        n += 1
    table = []
    while n < len(lines) and lines[n].startswith("|"):
        table.append(cells(lines[n]))
        n += 1
    return table[0], table[2:]


def numbers(cell: str) -> list[float]:
    """'0.5642' -> [0.5642]; '85.66 / 85.66' -> [85.66, 85.66]; '13,598' -> [13598.0]; '10%' -> [0.1]; '' -> []."""
    out = []
    for part in filter(None, (p.strip() for p in cell.split("/"))):
        part = part.replace(",", "")
        out.append(float(part[:-1]) / 100 if part.endswith("%") else float(part))
    return out


def keys(column) -> list[str]:
    return column if isinstance(column, list) else [column]


@pytest.mark.parametrize("name", CONDITIONS)
def test_readme_table_agrees_with_expected_yaml(name):
    cond = next(c for c in expected()["conditions"] if c["name"] == name)
    header, body = readme_table(cond["readme"])
    assert len(header) == len(cond["columns"]), (header, cond["columns"])
    width = len(cond["rows"][0]["row"])
    recorded = {tuple(r["row"]): r for r in cond["rows"]}
    assert len(recorded) == len(cond["rows"]), f"{name}: a row is recorded twice"
    readme_rows = {tuple(line[:width]): line for line in body}
    assert len(readme_rows) == len(body), f"{name}: a README row label is repeated"
    assert set(recorded) == set(readme_rows), f"{name}: README rows {sorted(readme_rows)} != yaml {sorted(recorded)}"
    for label, r in recorded.items():
        line = readme_rows[label]
        shown = {}
        for column, cell in zip(cond["columns"][width:], line[width:]):
            values = numbers(cell)
            if values:
                assert len(values) == len(keys(column)), (label, column, cell)
                shown.update(zip(keys(column), values))
        # every figure in the yaml is in its README cell, and every README figure is recorded in the yaml
        assert shown == {k: float(v) for k, v in r["scores"].items()}, (name, label)


def test_every_row_names_its_command():
    for cond in expected()["conditions"]:
        for r in cond["rows"]:
            assert r["command"].startswith("python -m "), r


def test_recorded_figures_clear_their_floors():
    """The floors sit under the figures they guard (test_quality.py holds fresh figures to them)."""
    for cond in expected()["conditions"]:
        for r in cond["rows"]:
            s = r["scores"]
            for m, floor in r.get("floor", {}).items():
                assert s[m] > floor, (r["row"], m)
            for m, ceiling in r.get("ceiling", {}).items():
                assert s[m] < ceiling, (r["row"], m)
            for other, factors in r.get("beats", {}).items():
                o = row(cond["name"], *r["row"][:-1], other)["scores"]
                for m, factor in factors.items():
                    assert s[m] > factor * o[m], (r["row"], other, m)
                    assert m not in r.get("floor", {}) or r["floor"][m] > factor * o[m], (r["row"], other, m)
