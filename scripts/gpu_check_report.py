"""The GPU check's report: every figure in one JSON file and one markdown table.

A figure is one number with its unit, its kind (``measured`` by a hardware counter or power
reading, ``counted`` by the counted meter, ``timed`` on the wall clock, ``outcome`` for test
counts), the target it is judged against when there is one, and whether it met it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "pytest-energy/gpu-check"
SCHEMA_VERSION = 1
FIGURE_KINDS = ("measured", "counted", "timed", "outcome", "label")
STATUSES = ("ok", "failed", "timeout", "skipped")


@dataclass(frozen=True)
class Figure:
    """One number the check produced."""

    step: str
    name: str
    value: float | int | str | None
    unit: str = ""
    kind: str = "measured"
    target: str = ""
    ok: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FIGURE_KINDS:
            raise ValueError(f"figure kind must be one of {FIGURE_KINDS}, not {self.kind!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Figure:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


@dataclass(frozen=True)
class StepOutcome:
    """How one step went: status, seconds taken, its budget, an error and notes."""

    name: str
    title: str
    status: str
    seconds: float
    budget_seconds: float
    error: str = ""
    notes: tuple[str, ...] = ()
    log: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"step status must be one of {STATUSES}, not {self.status!r}")


@dataclass
class Report:
    """Labels of the machine and software, each step's outcome, and every figure."""

    labels: dict[str, str] = field(default_factory=dict)
    steps: list[StepOutcome] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "labels": dict(self.labels),
            "steps": [asdict(step) | {"notes": list(step.notes)} for step in self.steps],
            "figures": [asdict(figure) for figure in self.figures],
        }


def format_value(value: float | int | str | None) -> str:
    """A figure's value for a table: 4 significant digits, integers whole, none as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("ok" if ok else "MISSED")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return lines


def markdown(report: Report) -> str:
    """The report as markdown: labels, a table of steps, a table of every figure."""
    lines = ["# pytest-energy GPU check", ""]
    lines += [f"- {key}: {value}" for key, value in report.labels.items()]
    lines += ["", "## Steps", ""]
    lines += _table(
        ["step", "status", "targets missed", "seconds", "budget s", "notes"],
        [
            [
                step.name,
                step.status,
                str(sum(f.step == step.name and f.ok is False for f in report.figures)),
                f"{step.seconds:.1f}",
                f"{step.budget_seconds:.0f}",
                "; ".join([*step.notes, *([step.error] if step.error else [])]),
            ]
            for step in report.steps
        ],
    )
    lines += ["", "## Figures", ""]
    lines += _table(
        ["step", "figure", "value", "unit", "kind", "target", "verdict", "note"],
        [
            [
                figure.step,
                figure.name,
                format_value(figure.value),
                figure.unit,
                figure.kind,
                figure.target,
                _verdict(figure.ok),
                figure.note,
            ]
            for figure in report.figures
        ],
    )
    return "\n".join(lines) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write ``gpu-check.json`` and ``gpu-check.md`` into ``out_dir``; return both paths."""
    json_path, markdown_path = out_dir / "gpu-check.json", out_dir / "gpu-check.md"
    write_text_atomic(json_path, json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    write_text_atomic(markdown_path, markdown(report))
    return json_path, markdown_path
