"""A campaign of bad inputs and faults, each run in a fresh temporary project (issue 11).

Every case writes a small project (a test file, maybe an ini file, a baseline, a fake powercap
tree), runs ``pytest`` or ``pytest-energy`` in a subprocess, and is judged on:

- exit: the exit status (a bad input must not exit 0 unless the case is only a warning);
- clear: the expected one-line message (naming the flag, key, file or test) was printed;
- traceback: a traceback or a frame from inside pytest_energy was shown;
- lost: a file the case protects (a baseline, an input, a blocking file) changed or vanished;
- wrong: a results file holds a silent wrong figure (negative, infinite, or 0 J unflagged).

    PYTHONPATH=$PWD python benchmarks/bad_input_campaign.py [-k SUBSTRING] [--markdown]

Targets: 0 tracebacks, 0 files lost, 0 silent wrong figures; every message clear.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
METER = ["--energy", "--energy-meter", "cputime", "--energy-rounds", "2"]
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|pytest_energy/[\w/]+\.py:\d+")

GOOD_TEST = """
import pytest

@pytest.mark.lifecycle(method="m", usage=[1e3, 1e6])
def test_m(energy):
    with energy.train("train"):
        sum(i * i for i in range(60_000))
    energy.accuracy = 0.5
    energy.inference(lambda: sum(range(3_000)), samples=4)
"""


def body(code: str) -> str:
    """A test module whose one test runs ``code`` with the ``energy`` fixture."""
    return "import pytest\n\n\ndef test_m(energy, energy_session):\n" + textwrap.indent(
        textwrap.dedent(code).strip() + "\n", "    "
    )


def marked(marker: str) -> str:
    return f"import pytest\n\n@pytest.mark.lifecycle({marker})\ndef test_m(energy):\n    pass\n"


def powercap(root: Path, energy_uj: str = "1000000", max_range: str = "262143328850") -> None:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")


# a conftest that moves the fake counter during the training window, as broken hardware could
MOVE_COUNTER = """
import pathlib, pytest

@pytest.fixture(autouse=True)
def move_counter(monkeypatch):
    path = pathlib.Path("powercap/intel-rapl:0/energy_uj")
    yield lambda value: path.write_text(f"{value}\\n")
"""

RAPL_TEST = """
def test_m(energy, move_counter):
    with energy.train("train"):
        move_counter({value})
    energy.inference(lambda: None)
"""


@dataclass
class Case:
    name: str
    group: str
    argv: list[str]
    expect: str
    files: dict[str, str] = field(default_factory=lambda: {"test_m.py": GOOD_TEST})
    expect_exit: tuple[int, ...] = (1, 2, 3, 4)
    protect: tuple[str, ...] = ()
    prepare: Callable[[Path], None] | None = None
    results: str | None = None


@dataclass
class Outcome:
    case: Case
    exit: int
    clear: bool
    traceback: bool
    lost: list[str]
    wrong: list[str]
    seconds: float
    output: str


def cases() -> list[Case]:
    cli = [sys.executable, "-m", "pytest_energy.cli"]
    baseline = json.dumps({"schema": "pytest-energy/baseline", "version": 1}) + "\n"
    return [
        # --- options -------------------------------------------------------------------------
        Case("--energy-rounds 0", "options", [*METER[:-2], "--energy-rounds", "0"],
             r"--energy-rounds: expected a whole number ≥ 1"),
        Case("--energy-rounds abc", "options", [*METER[:-2], "--energy-rounds", "abc"],
             r"--energy-rounds: expected a whole number"),
        Case("--energy-warmup -1", "options", [*METER, "--energy-warmup=-1"],
             r"--energy-warmup: expected a whole number ≥ 1"),
        Case("--energy-meter cputime,bogus", "options", ["--energy", "--energy-meter",
             "cputime,bogus"], r"unknown meter 'bogus'"),
        Case("--energy-meter auto,cputime", "options", ["--energy", "--energy-meter",
             "auto,cputime"], r"auto cannot be combined"),
        Case("--energy-tau -1", "options", [*METER, "--energy-tau=-1"], r"--energy-tau: expected"),
        Case("--energy-tau nan", "options", [*METER, "--energy-tau", "nan"],
             r"--energy-tau: expected"),
        Case("--energy-usage 1e3,abc", "options", [*METER, "--energy-usage", "1e3,abc"],
             r"--energy-usage: 'abc' is not a number"),
        Case("--energy-usage 1e19", "options", [*METER, "--energy-usage", "1e19"],
             r"--energy-usage: usage must be a count of inferences from 0 to 1e\+18"),
        Case("--energy-tolerance -5%", "options", [*METER, "--energy-tolerance=-5%"],
             r"--energy-tolerance: a tolerance must be a finite number ≥ 0"),
        Case("--energy-tolerance 5", "options", [*METER, "--energy-tolerance", "5"],
             r"--energy-tolerance: '5' is ambiguous.*Write '5%'"),
        Case("--energy-cpu-watts 1e9", "options", [*METER, "--energy-cpu-watts", "1e9"],
             r"--energy-cpu-watts: expected watts per hardware thread"),
        Case("--energy-cpu-watts 0", "options", [*METER, "--energy-cpu-watts", "0"],
             r"--energy-cpu-watts: expected watts per hardware thread"),
        Case("--energy-counted-table missing", "options", ["--energy", "--energy-meter",
             "counted", "--energy-counted-table", "missing.json"], r"missing\.json"),
        Case("--energy-counted-table not JSON", "options", ["--energy", "--energy-meter",
             "counted", "--energy-counted-table", "table.json"], r"table\.json",
             files={"test_m.py": GOOD_TEST, "table.json": "{not json"}),
        Case("--energy-counted-table negative", "options", ["--energy", "--energy-meter",
             "counted", "--energy-counted-table", "table.json"], r"fp32_mult_pj",
             files={"test_m.py": GOOD_TEST, "table.json": '{"fp32_mult_pj": -1}'}),
        Case("--energy-pue 0.5", "options", [*METER, "--energy-pue", "0.5"],
             r"--energy-pue: expected"),
        Case("--energy-carbon-intensity -1", "options",
             [*METER, "--energy-carbon-intensity=-1"], r"--energy-carbon-intensity: expected"),
        Case("--energy-country XXX", "options", [*METER, "--energy-country", "XXX"], r"XXX"),
        Case("--energy-plot out.txt", "options", [*METER, "--energy-plot", "out.txt"],
             r"--energy-plot 'out.txt': the file name must end in \.png or \.svg"),
        Case("--energy-json is a directory", "options", [*METER, "--energy-json", "out"],
             r"--energy-json 'out' is a directory", prepare=lambda p: (p / "out").mkdir()),
        Case("--energy-json under a file", "files", [*METER, "--energy-json", "f/r.json"],
             r"--energy-json 'f/r\.json': f is a regular file", protect=("f",),
             files={"test_m.py": GOOD_TEST, "f": "keep\n"}),
        Case("--energy-save without --energy", "options", ["--energy-save"],
             r"--energy-save needs --energy"),
        Case("--energy-prune without --energy-save", "options", [*METER, "--energy-prune"],
             r"--energy-prune works with --energy-save"),
        Case("ini energy_rounds = zero", "options", METER[:-2], r"ini energy_rounds",
             files={"test_m.py": GOOD_TEST, "pytest.ini": "[pytest]\nenergy_rounds = zero\n"}),
        Case("ini energy_tolerance = 5", "options", METER, r"ini energy_tolerance.*Write '5%'",
             files={"test_m.py": GOOD_TEST, "pytest.ini": "[pytest]\nenergy_tolerance = 5\n"}),
        # --- marker --------------------------------------------------------------------------
        Case("lifecycle('positional')", "marker", [], r"takes keywords only",
             files={"test_m.py": marked("'x'")}),
        Case("lifecycle(usage='abc')", "marker", [], r"'abc' is not a number of inferences",
             files={"test_m.py": marked("usage='abc'")}),
        Case("lifecycle(tau=-1)", "marker", METER, r"lifecycle\(tau=...\): expected τ",
             files={"test_m.py": marked("tau=-1")}),
        Case("lifecycle(method=['a'])", "marker", [], r"label method= must be a string",
             files={"test_m.py": marked("method=['a']")}),
        Case("lifecycle(usage=[])", "marker", [], r"give at least one usage",
             files={"test_m.py": marked("usage=[]")}),
        Case("lifecycle(tolerance={'trian': .1})", "marker", [], r"unknown quantity 'trian'",
             files={"test_m.py": marked("tolerance={'trian': 0.1}")}),
        Case("lifecycle(mdoel='x')", "marker", [], r"did you mean model=",
             files={"test_m.py": marked("mdoel='x'")}),
        Case("lifecycle(tolerance='5')", "marker", METER, r"Write '5%'",
             files={"test_m.py": marked("tolerance='5'")}),
        # --- fixture -------------------------------------------------------------------------
        Case("energy.train('')", "fixture", [], r"needs a non-empty phase name",
             files={"test_m.py": body("with energy.train(''):\n    pass")}),
        Case("same phase twice", "fixture", METER, r"phase 'a' was already recorded",
             files={"test_m.py": body("for _ in range(2):\n    with energy.train('a'):\n"
                                      "        pass")}),
        Case("inference('text')", "fixture", [], r"needs a callable, got str",
             files={"test_m.py": body("energy.inference('text')")}),
        Case("inference(samples=0)", "fixture", METER, r"samples=...\): expected a whole",
             files={"test_m.py": body("energy.inference(lambda: 1, samples=0)")}),
        Case("accuracy = 83", "fixture", [], r"a fraction: 0\.83, not 83",
             files={"test_m.py": body("energy.accuracy = 83")}),
        Case("accuracy = 'high'", "fixture", METER, r"must be a number in \[0, 1\]",
             files={"test_m.py": body("energy.accuracy = 'high'")}),
        Case("charge(object())", "fixture", [], r"energy.charge\(\) takes the Charge",
             files={"test_m.py": body("energy.charge(object())")}),
        Case("charge of an open measure()", "fixture", METER, r"window is still open|nest",
             files={"test_m.py": body("with energy_session.measure('base') as c:\n"
                                      "    energy.charge(c)")}),
        Case("inference fn raises", "fixture", METER, r"ZeroDivisionError",
             files={"test_m.py": body("energy.inference(lambda: 1 / 0)")}),
        Case("inference of a coroutine fn", "fixture", [], r"returned a coroutine",
             files={"test_m.py": "async def f():\n    pass\n\n" + body(
                 "energy.inference(f)")}),
        Case("test fails after training: no baseline", "fixture",
             [*METER, "--energy-save"], r"1 failed",
             files={"test_m.py": body("with energy.train('t'):\n    pass\nassert False")},
             prepare=lambda p: None),
        # --- files ---------------------------------------------------------------------------
        Case("corrupt baseline is kept", "files", [*METER, "--energy-save"],
             r"cputime-.*\.json", protect=(_cputime_baseline(),),
             prepare=lambda p: _corrupt_baseline(p)),
        Case("baselines dir is a file", "files", [*METER, "--energy-baselines=b",
             "--energy-save"], r"\bb\b.*(not a directory|regular file)", protect=("b",),
             files={"test_m.py": GOOD_TEST, "b": "a file\n"}),
        Case("stale temporary is cleaned", "files", [*METER, "--energy-json=r.json"],
             r"results written to r\.json", expect_exit=(0,), results="r.json",
             prepare=lambda p: (p / ".pytest-energy-r.json.999999.dead.tmp").write_text("{")),
        Case("report: missing results", "cli", [*cli, "report", "missing.json"],
             r"missing\.json"),
        Case("report: corrupt results", "cli", [*cli, "report", "r.json"], r"r\.json",
             files={"r.json": "{half"}, protect=("r.json",)),
        Case("report: --markdown over its input", "cli", [*cli, "report", "r.json",
             "--markdown", "r.json"], r"also an input of this run", protect=("r.json",),
             prepare=lambda p: _results(p, "r.json")),
        Case("report: --markdown under a file", "cli", [*cli, "report", "r.json",
             "--markdown", "f/out.md"], r"f is a regular file", protect=("f", "r.json"),
             files={"f": "keep\n"}, prepare=lambda p: _results(p, "r.json")),
        Case("compare: an incomplete baseline", "cli", [*cli, "compare", "b.json",
             "missing.json"], r"b\.json: .*not a pytest-energy file", files={"b.json": baseline},
             protect=("b.json",)),
        Case("meters: rapl root is a file", "cli", [*cli, "meters", "--rapl-root", "f"],
             r"rapl: f is a file, not the powercap directory", expect_exit=(0,),
             files={"f": "x\n"}),
        # --- counters (a fake powercap tree) -------------------------------------------------
        Case("rapl root is a file", "counters", ["--energy", "--energy-meter", "rapl",
             "--energy-rapl-root", "f"], r"rapl: f is a file", files={"f": "x\n",
             "test_m.py": GOOD_TEST}),
        Case("rapl max_energy_range_uj 0", "counters", ["--energy", "--energy-meter", "rapl",
             "--energy-rapl-root", "powercap"], r"max_energy_range_uj holds '0'",
             prepare=lambda p: powercap(p / "powercap", max_range="0")),
        Case("rapl counter backwards", "counters", ["--energy", "--energy-meter", "rapl",
             "--energy-rapl-root", "powercap", "--energy-json=r.json"],
             r"went down by more than a wrap can explain", results="r.json",
             files={"conftest.py": MOVE_COUNTER, "test_m.py": RAPL_TEST.format(value=500)},
             prepare=lambda p: powercap(p / "powercap")),
        Case("rapl counter jumps 200 kJ", "counters", ["--energy", "--energy-meter", "rapl",
             "--energy-rapl-root", "powercap", "--energy-json=r.json"],
             r"jumped .* beyond 1000 W", results="r.json",
             files={"conftest.py": MOVE_COUNTER,
                    "test_m.py": RAPL_TEST.format(value=200_000_000_000)},
             prepare=lambda p: powercap(p / "powercap")),
        Case("rapl counter garbage", "counters", ["--energy", "--energy-meter", "rapl",
             "--energy-rapl-root", "powercap"], r"rapl: reading the energy counters failed",
             files={"conftest.py": MOVE_COUNTER, "test_m.py": RAPL_TEST.format(value="'x'")},
             prepare=lambda p: powercap(p / "powercap")),
        # --- xdist and interruption ----------------------------------------------------------
        Case("-n 2 rapl shared", "xdist", ["-n", "2", "--energy", "--energy-meter", "rapl",
             "--energy-rapl-root", "powercap"], r"rapl", prepare=lambda p: powercap(
             p / "powercap")),
        Case("-n 2 --energy-json under a file", "xdist", ["-n", "2", *METER,
             "--energy-json=f/r.json"], r"f is a regular file", protect=("f",),
             files={"test_m.py": GOOD_TEST, "f": "keep\n"}),
        Case("Ctrl-C in a test keeps the baseline", "interruption", [*METER, "--energy-save"],
             r"interrupted", expect_exit=(2,),
             protect=("baselines/cputime-intel-xeon-2t.json",),
             files={"test_m.py": body("raise KeyboardInterrupt")},
             prepare=lambda p: _saved_baseline(p)),
    ]  # fmt: skip


def _cputime_baseline() -> str:
    """This machine's cputime baseline file, named as the gate names it."""
    from pytest_energy.gate.profiles import profile_for
    from pytest_energy.gate.store import baseline_path
    from pytest_energy.meters.cputime import CpuTimeMeter

    return baseline_path("baselines", profile_for(CpuTimeMeter())).as_posix()


def _corrupt_baseline(project: Path) -> None:
    (project / "baselines").mkdir()
    (project / _cputime_baseline()).write_text('{"schema": "pytest-e')


def _results(project: Path, name: str) -> None:
    (project / "test_m.py").write_text(GOOD_TEST)
    run(project, [*METER, f"--energy-json={name}"])


def _saved_baseline(project: Path) -> None:
    (project / "test_ok.py").write_text(GOOD_TEST.replace("test_m", "test_ok"))
    run(project, [*METER, "--energy-save", "test_ok.py"])


def run(project: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    command = argv if argv and argv[0] == sys.executable else [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *argv,
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "COLUMNS": "200"}
    return subprocess.run(
        command, cwd=project, capture_output=True, text=True, timeout=300, env=environment
    )


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def wrong_figures(path: Path) -> list[str]:
    """Negative, non-finite, or unflagged 0 J figures in a results file."""
    if not path.is_file():
        return []
    document = json.loads(path.read_text())
    wrong = []
    for nodeid, record in document.get("tests", {}).items():
        warned = " ".join(record.get("warnings", []))
        for meter, view in record.get("meters", {}).items():
            figures = {"TEC": view.get("tec_joules"), "IEC": view.get("iec_joules_per_sample")}
            for name, value in figures.items():
                if value is None:
                    continue
                if not math.isfinite(value) or value < 0 or (value == 0 and "0 J" not in warned):
                    wrong.append(f"{nodeid} {meter} {name} = {value}")
    return wrong


def judge(case: Case) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="bad-input-") as folder:
        project = Path(folder)
        for name, text in case.files.items():
            (project / name).write_text(text)
        if case.prepare is not None:
            case.prepare(project)
        before = {name: _digest(project / name) for name in case.protect}
        started = time.perf_counter()
        completed = run(project, case.argv)
        seconds = time.perf_counter() - started
        output = completed.stdout + completed.stderr
        lost = [name for name, digest in before.items() if _digest(project / name) != digest]
        if case.name == "stale temporary is cleaned" and any(project.glob(".pytest-energy-*")):
            lost.append("temporary left")
        wrong = wrong_figures(project / case.results) if case.results else []
        return Outcome(
            case=case,
            exit=completed.returncode,
            clear=bool(re.search(case.expect, output)) and completed.returncode in case.expect_exit,
            traceback=bool(TRACEBACK.search(output)),
            lost=lost,
            wrong=wrong,
            seconds=seconds,
            output=output,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="run only cases whose name contains this")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--verbose", action="store_true", help="print the output of bad cases")
    args = parser.parse_args()
    chosen = [case for case in cases() if args.k in case.name]
    outcomes = []
    for case in chosen:
        outcome = judge(case)
        outcomes.append(outcome)
        print(
            f"{case.group:<13}{case.name:<42}exit {outcome.exit:<3}"
            f"clear {'yes' if outcome.clear else 'NO ':<4}"
            f"traceback {'YES' if outcome.traceback else 'no ':<4}"
            f"lost {', '.join(outcome.lost) or 'no':<6}"
            f"wrong {', '.join(outcome.wrong) or 'no'}",
            flush=True,
        )
        bad = not outcome.clear or outcome.traceback or outcome.lost or outcome.wrong
        if args.verbose and bad:
            print(textwrap.indent(outcome.output[-3000:], "    | "))
    if args.markdown:
        print("\n| group | case | exit | message clear | traceback | data lost | wrong figure |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for outcome in outcomes:
            print(
                f"| {outcome.case.group} | `{outcome.case.name}` | {outcome.exit} | "
                f"{'yes' if outcome.clear else 'no'} | "
                f"{'yes' if outcome.traceback else 'no'} | {', '.join(outcome.lost) or 'no'} | "
                f"{', '.join(outcome.wrong) or 'no'} |"
            )
    unclear = sum(not outcome.clear for outcome in outcomes)
    tracebacks = sum(outcome.traceback for outcome in outcomes)
    lost = sum(bool(outcome.lost) for outcome in outcomes)
    wrong = sum(bool(outcome.wrong) for outcome in outcomes)
    print(
        f"\n{len(outcomes)} cases: {unclear} unclear, {tracebacks} tracebacks, "
        f"{lost} with data lost, {wrong} with a silent wrong figure"
    )
    return 1 if unclear or tracebacks or lost or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
