"""``pytest-energy export``: a results file in the formats dashboards already read.

- ``github-action-benchmark``: its ``customSmallerIsBetter`` tool reads a JSON list of
  ``{"name", "unit", "value", "range"?, "extra"?}`` (benchmark-action/github-action-benchmark).
- ``bencher``: Bencher Metric Format (BMF), ``{benchmark: {measure: {"value", "lower_value"?,
  "upper_value"?}}}`` (https://bencher.dev/docs/reference/bencher-metric-format). BMF has no
  unit field (a Bencher measure carries its unit), so the unit is part of the measure's slug.

One measure per quantity, per test and meter: TEC (J), IEC (J/sample) and E(MUI) (J) at each
usage the test declares. The benchmark's name says the meter and its kind (measured, estimated
or counted). Where the inference was measured in several rounds, the spread of the rounds is
given (GAB: ``range``; BMF: ``lower_value`` / ``upper_value``); E(MUI)'s spread is TEC + MUI ×
the rounds' lowest and highest joules per sample. Everything here is pure: dict in, dict out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_energy.errors import ConfigError
from pytest_energy.record import MeterFigures
from pytest_energy.results import SCHEMA as RESULTS_SCHEMA

FORMATS = ("github-action-benchmark", "bencher")


@dataclass(frozen=True)
class Measure:
    """One figure of one test and meter: what it is, its unit, value and the rounds' spread."""

    test: str
    meter: str
    kind: str
    quantity: str  # "TEC", "IEC" or "E(MUI=1e6)"
    slug: str  # "tec-joules", "iec-joules-per-sample", "e-mui-1e6-joules"
    unit: str  # "J" or "J/sample"
    value: float
    lower: float | None = None
    upper: float | None = None

    @property
    def benchmark(self) -> str:
        return f"{self.test} [{self.meter}, {self.kind}]"


def usage_label(mui: float) -> str:
    """1000 -> "1000", 1e6 -> "1e6": short and stable, for names and slugs."""
    text = f"{mui:.6g}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def measures(document: Mapping[str, Any]) -> Iterator[Measure]:
    """Every figure of a results document, in test, meter, quantity order."""
    for test in sorted(document["tests"]):
        record = document["tests"][test]
        for meter in sorted(record.get("meters", {})):
            view = record["meters"][meter]
            kind = str(view.get("kind", "unknown"))
            tec = view.get("tec_joules")
            rounds = [
                float(x) for x in (view.get("inference") or {}).get("joules_per_sample") or []
            ]
            spread = (min(rounds), max(rounds)) if len(rounds) > 1 else None
            common = {"test": test, "meter": meter, "kind": kind}
            if isinstance(tec, (int, float)):
                yield Measure(**common, quantity="TEC", slug="tec-joules", unit="J", value=tec)
            iec = view.get("iec_joules_per_sample")
            if isinstance(iec, (int, float)):
                yield Measure(
                    **common,
                    quantity="IEC",
                    slug="iec-joules-per-sample",
                    unit="J/sample",
                    value=iec,
                    lower=spread[0] if spread else None,
                    upper=spread[1] if spread else None,
                )
            for entry in view.get("full_cycle") or []:
                joules, mui = entry.get("joules"), entry.get("usage")
                if not isinstance(joules, (int, float)) or not isinstance(mui, (int, float)):
                    continue
                label = usage_label(mui)
                bounds = (
                    (
                        MeterFigures(kind, float(tec), spread[0]).full_cycle_joules(mui),
                        MeterFigures(kind, float(tec), spread[1]).full_cycle_joules(mui),
                    )
                    if spread and isinstance(tec, (int, float))
                    else (None, None)
                )
                yield Measure(
                    **common,
                    quantity=f"E(MUI={label})",
                    slug=f"e-mui-{label}-joules",
                    unit="J",
                    value=joules,
                    lower=bounds[0],
                    upper=bounds[1],
                )


def github_action_benchmark(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """github-action-benchmark's ``customSmallerIsBetter`` list (smaller energy is better)."""
    run = document.get("run") or {}
    commit = run.get("commit")
    entries = []
    for measure in measures(document):
        entry: dict[str, Any] = {
            "name": f"{measure.benchmark} {measure.quantity}",
            "unit": measure.unit,
            "value": measure.value,
        }
        if measure.lower is not None and measure.upper is not None:
            entry["range"] = f"± {(measure.upper - measure.lower) / 2:.4g}"
        extra = f"{measure.kind} by the {measure.meter} meter"
        if measure.lower is not None:
            extra += f"; rounds {measure.lower:.4g}–{measure.upper:.4g} {measure.unit}"
        if commit:
            extra += f"; commit {str(commit)[:12]}" + (" (dirty)" if run.get("dirty") else "")
        entry["extra"] = extra
        entries.append(entry)
    return entries


def bencher_metric_format(document: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Bencher Metric Format: benchmark -> measure slug (unit in the slug) -> metric."""
    bmf: dict[str, dict[str, dict[str, float]]] = {}
    for measure in measures(document):
        metric = {"value": measure.value}
        if measure.lower is not None and measure.upper is not None:
            metric["lower_value"] = measure.lower
            metric["upper_value"] = measure.upper
        bmf.setdefault(measure.benchmark, {})[measure.slug] = metric
    return bmf


def check_results(document: Any, source: str) -> Mapping[str, Any]:
    """``document`` if it is a pytest-energy results file, else a ConfigError naming ``source``."""
    if (
        not isinstance(document, Mapping)
        or document.get("schema") != RESULTS_SCHEMA
        or not isinstance(document.get("tests"), Mapping)
    ):
        raise ConfigError(
            f"{source} is not a pytest-energy results file (schema {RESULTS_SCHEMA!r}); "
            f"write one with pytest --energy --energy-json FILE"
        )
    return document


def read_results(path: str) -> Mapping[str, Any]:
    """Load and check a results file, with one clear line for each way it can be wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (a results file from --energy-json)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it ({error})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{path} is not JSON (line {error.lineno}: {error.msg}); "
            f"export reads a results file from --energy-json"
        ) from None
    return check_results(document, path)


def export(document: Mapping[str, Any], format_name: str) -> Any:
    """The document converted to ``format_name`` (one of FORMATS)."""
    if format_name == "github-action-benchmark":
        return github_action_benchmark(document)
    if format_name == "bencher":
        return bencher_metric_format(document)
    raise ConfigError(f"--format {format_name!r}: unknown format; use one of {', '.join(FORMATS)}")


def command_export(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:  # before reading: a typo is named even when the file is bad
        export({}, args.format)
    converted = export(read_results(args.results), args.format)
    text = json.dumps(converted, indent=2, allow_nan=False) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    target = Path(args.output)
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"--output {args.output}: cannot write ({error.strerror})") from None
    print(f"{args.format} JSON written to {target}", file=sys.stderr)
    return 0


def add_export_command(commands: Any) -> None:
    """Register ``pytest-energy export`` on the CLI's subparsers."""
    parser = commands.add_parser(
        "export",
        help="convert a results file for a dashboard (github-action-benchmark, Bencher)",
        description="Write a results file's TEC, IEC and E(MUI) per usage, per test and meter, "
        "as github-action-benchmark's customSmallerIsBetter list or Bencher Metric Format JSON.",
    )
    parser.add_argument("results", metavar="RESULTS.json", help="a results file (--energy-json)")
    parser.add_argument(
        "--format", required=True, metavar="FORMAT", help=f"one of: {', '.join(FORMATS)}"
    )
    parser.add_argument(
        "--output", "-o", metavar="OUT", help="write there (default or '-': standard output)"
    )
    parser.set_defaults(handler=command_export)
