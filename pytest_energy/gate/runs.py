"""Sessions in fresh processes: ``pytest-energy record`` and ``pytest-energy ab``.

A noisy meter's figures move between pytest sessions (co-tenants, clocks, thread placement), so
both commands run whole sessions, each a new ``python -m pytest`` process:

- ``record --sessions K [-- PYTEST ARGS]``: K sessions with ``--energy --energy-save``, so a new
  baseline rests on K sessions, not one (the gate judges against their spread).
- ``check [--sessions M] [-- PYTEST ARGS]``: M sessions of the working tree judged together
  against the committed baseline (``rules.judge_history`` with M sessions: the spread is pooled
  over both sides, so one slow session of this run cannot decide the verdict alone). The
  baseline-history mode for noisy meters when one session is not enough to be trusted.
- ``ab BASE [HEAD] [--pairs N] [-- PYTEST ARGS]``: BASE and HEAD (default: the checked-out
  commit, which must be clean) are checked out into temporary git worktrees and their tests run
  alternately, N pairs, the order within each pair drawn at random (randomized multiple
  interleaved trials, Abedi & Brecht 2017). Each test, meter and quantity is judged on the N
  paired sessions (``rules.judge_paired``); the output is a baseline run's: terminal summary,
  ``--json`` results with the comparison, ``--markdown``; exit 1 on a regression, 2 on bad
  input. The worktrees are removed whatever happens, Ctrl-C included. ``--interleave`` starts
  both sessions of a pair at once and lets them take turns test by test (``turns``), so the
  two runs of a test are seconds apart and share the machine's drift.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_energy.config import parse_tolerance
from pytest_energy.errors import BaselineError, ConfigError, EnergyError
from pytest_energy.gate.compare import (
    ComparisonReport,
    Provenance,
    Recorded,
    compare_snapshots,
)
from pytest_energy.gate.plugin import parse_alpha, parse_gate
from pytest_energy.gate.profiles import profile_from_results
from pytest_energy.gate.rules import DEFAULT_ALPHA, MIN_SESSIONS
from pytest_energy.gate.sessions import session_item
from pytest_energy.gate.store import (
    DEFAULT_DIRECTORY,
    BaselineFile,
    baseline_path,
    load_baseline,
    merged_snapshot,
    read_json,
    refuse_overwriting_inputs,
    validate_results,
)
from pytest_energy.report.terminal import summary_lines
from pytest_energy.turns import TURNS_VARIABLE, wait_for_sides

DEFAULT_PAIRS = 5
DEFAULT_RECORD_SESSIONS = 5
DEFAULT_CHECK_SESSIONS = 3


class RunError(EnergyError):
    """A session could not run or judge (exit status 2), with one line saying why."""


# --- the commands' arguments -------------------------------------------------------------------


def add_run_commands(commands: Any) -> None:
    """Add ``record`` and ``ab`` to the ``pytest-energy`` subcommands."""
    record = commands.add_parser(
        "record",
        help="record a baseline from several fresh pytest sessions (--energy --energy-save each)",
        description="Run `pytest --energy --energy-save PYTEST ARGS` K times, each in a new "
        "process, so a noisy meter's baseline holds K sessions (the gate judges new sessions "
        "against the spread between them). Arguments after `--` go to pytest.",
    )
    record.add_argument(
        "--sessions",
        metavar="K",
        default=str(DEFAULT_RECORD_SESSIONS),
        help=f"sessions to record (default {DEFAULT_RECORD_SESSIONS}; at least {MIN_SESSIONS} "
        f"before a noisy gate can judge)",
    )
    record.set_defaults(handler=command_record)

    ab = commands.add_parser(
        "ab",
        help="A/B: run BASE and HEAD alternately as fresh sessions and judge the paired figures",
        description="Check BASE (and HEAD, default the checked-out commit) out into temporary git "
        "worktrees, run the selected energy tests of both alternately as fresh pytest sessions "
        "(random order within each pair) and judge each test on the paired sessions. Exit 1 on "
        "a regression, 2 on bad input. Arguments after `--` go to pytest (e.g. the tests to "
        "run and --energy-meter). Costs 2 × PAIRS sessions.",
    )
    ab.add_argument("base", metavar="BASE", help="the revision to compare against (e.g. main)")
    ab.add_argument(
        "head",
        metavar="HEAD",
        nargs="?",
        default=None,
        help="the candidate revision (default: the checked-out commit; the tree must be clean)",
    )
    ab.add_argument(
        "--pairs",
        metavar="N",
        default=str(DEFAULT_PAIRS),
        help=f"pairs of sessions (default {DEFAULT_PAIRS}, at least {MIN_SESSIONS})",
    )
    ab.add_argument("--seed", metavar="S", default=None, help="seed of the order within pairs")
    ab.add_argument(
        "--interleave",
        action="store_true",
        help="run both sessions of a pair at once, taking turns test by test: each test's two "
        "runs are seconds apart and share the machine's drift (one test runs at a time; not "
        "with pytest-xdist's -n)",
    )
    _add_judging_options(ab)
    ab.set_defaults(handler=command_ab)

    check = commands.add_parser(
        "check",
        help="judge the working tree on M fresh sessions against the committed baseline",
        description="Run `pytest --energy PYTEST ARGS` M times, each in a new process, and judge "
        "each test on the M sessions together against the baseline file of this machine's "
        "profile (a noisy meter: this run's sessions against the baseline's, spread pooled over "
        "both). Exit 1 on a regression, 2 on bad input. Arguments after `--` go to pytest. "
        "Costs M sessions.",
    )
    check.add_argument(
        "--sessions",
        metavar="M",
        default=str(DEFAULT_CHECK_SESSIONS),
        help=f"sessions of this run (default {DEFAULT_CHECK_SESSIONS})",
    )
    check.add_argument(
        "--baselines",
        metavar="DIR",
        default=DEFAULT_DIRECTORY,
        help=f"directory of the baseline files (default {DEFAULT_DIRECTORY}, relative to here)",
    )
    _add_judging_options(check)
    check.set_defaults(handler=command_check)


def _add_judging_options(parser: Any) -> None:
    """The options ``ab`` and ``check`` share: how to judge and where to write."""
    parser.add_argument(
        "--tolerance",
        metavar="FRACTION",
        default=None,
        help="allowed rise for every test, e.g. 5%% (default: each test's own)",
    )
    parser.add_argument(
        "--alpha",
        default=str(DEFAULT_ALPHA),
        help=f"significance level of each side of the interval (default {DEFAULT_ALPHA:g})",
    )
    parser.add_argument("--gate", metavar="METERS", default=None, help="meters that gate (auto)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results JSON here")
    parser.add_argument("--markdown", metavar="PATH", default=None, help="write a markdown report")
    parser.add_argument(
        "--fail-on-improvement",
        action="store_true",
        help="an improvement beyond tolerance fails the run too",
    )


def _count(value: str, flag: str, least: int) -> int:
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r}: expected a whole number ≥ {least}") from None
    if count < least:
        if least == 1:
            raise ConfigError(f"{flag} {count}: at least one session is needed")
        raise ConfigError(
            f"{flag} {count}: at least {least} are needed to measure the spread between "
            f"sessions (5 is a good start)"
        )
    return count


# --- running one pytest session ---------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """One finished pytest session: exit status, its output and its results file."""

    returncode: int
    output: str
    results: Path


def _session_command(
    directory: Path, pytest_args: Sequence[str], results: Path, extra: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one session of ``directory``'s tests.

    The directory's own code comes first on ``sys.path`` (and ``src/`` when there is one), so
    a worktree's package is the one imported, not an editable install of the main checkout.
    """
    environment = dict(os.environ)
    environment.pop(TURNS_VARIABLE, None)
    paths = [str(directory)] + ([str(directory / "src")] if (directory / "src").is_dir() else [])
    if environment.get("PYTHONPATH"):
        paths.append(environment["PYTHONPATH"])
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-rf",
        *pytest_args,
        "--energy",
        # One argument, not two: pytest takes an existing path among its arguments as a hint
        # for the rootdir, and the results file of the previous session exists.
        f"--energy-json={results}",
        *extra,
    ]
    return command, environment


def run_session(
    directory: Path, pytest_args: Sequence[str], results: Path, extra: Sequence[str] = ()
) -> Session:
    """``python -m pytest PYTEST_ARGS --energy --energy-json RESULTS`` in ``directory``."""
    command, environment = _session_command(directory, pytest_args, results, extra)
    completed = subprocess.run(
        command, cwd=directory, env=environment, capture_output=True, text=True, check=False
    )
    return Session(completed.returncode, completed.stdout + completed.stderr, results)


def run_interleaved_pair(
    sides: Sequence[tuple[Path, Path]],
    pytest_args: Sequence[str],
    scratch: Path,
    extra: Sequence[str] = (),
) -> list[Session]:
    """Two sessions at once, taking turns window by window (``turns``); ``sides[0]`` goes first.

    ``sides``: (directory, results file) of each side. Output goes to files, not pipes, so a
    side never blocks on a full pipe while the other runs. A side that ends (or dies) frees the
    other to run the rest of its tests alone; on any error or Ctrl-C both are stopped.
    """
    turn_file = Path(tempfile.mkdtemp(prefix="turns-", dir=scratch), "turns")
    turn_file.write_text("0")
    processes, logs = [], []
    try:
        for role, (directory, results) in enumerate(sides):
            command, environment = _session_command(directory, pytest_args, results, extra)
            environment[TURNS_VARIABLE] = f"{turn_file}:{role}"
            log = open(turn_file.with_name(f"side-{role}.log"), "w+")  # noqa: SIM115
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    command, cwd=directory, env=environment, stdout=log, stderr=subprocess.STDOUT
                )
            )
        wait_for_sides(processes, turn_file)
        sessions = []
        for log, process, (_, results) in zip(logs, processes, sides, strict=True):
            log.seek(0)
            sessions.append(Session(process.returncode, log.read(), results))
        return sessions
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def _uses_xdist(pytest_args: Sequence[str]) -> bool:
    """Whether the pytest arguments ask pytest-xdist for workers (``-n 2``, ``-n2``, ``-nauto``)."""
    return any(
        argument == "-n" or argument.startswith(("-n", "--numprocesses", "--dist"))
        for argument in pytest_args
        if not argument.startswith("--no")
    )


def _failed_tests(output: str) -> list[str]:
    return [
        line.split(" ", 1)[1].split(" - ", 1)[0]
        for line in output.splitlines()
        if line.startswith(("FAILED ", "ERROR "))
    ]


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "E ", "pytest:"))]
    return (errors or lines or ["no output"])[-1]


def _check_session(session: Session, side: str) -> Mapping[str, Any]:
    """The session's validated results, or a ``RunError`` saying what went wrong."""
    if session.returncode == 1:
        failed = ", ".join(_failed_tests(session.output)) or "a test"
        raise RunError(f"{failed} failed on {side}: both sides must pass to be compared")
    if session.returncode == 5:
        raise RunError(f"{side} has none of the selected tests (pytest collected nothing)")
    if session.returncode != 0:
        raise RunError(
            f"pytest could not run the selected tests on {side} (exit {session.returncode}: "
            f"{_last_error(session.output)})"
        )
    try:
        return validate_results(read_json(session.results, "results file"), str(session.results))
    except BaselineError as error:
        raise RunError(f"{side}: {error}") from None


# --- record --------------------------------------------------------------------------------------


def command_record(args: argparse.Namespace) -> int:
    sessions = _count(args.sessions, "--sessions", 1)
    pytest_args = list(getattr(args, "passthrough", []))
    directory = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="pytest-energy-record-") as scratch:
        for index in range(sessions):
            print(f"session {index + 1}/{sessions}: pytest --energy --energy-save", flush=True)
            session = run_session(
                directory, pytest_args, Path(scratch, "results.json"), ["--energy-save"]
            )
            try:
                _check_session(session, f"session {index + 1}")
            except RunError:
                sys.stdout.write(session.output)
                raise
            saved = [line for line in session.output.splitlines() if "baseline saved" in line]
            print("    " + ("; ".join(saved) or "no baseline saved"), flush=True)
    print(f"recorded {sessions} session(s)")
    return 0


# --- ab ------------------------------------------------------------------------------------------


def _git(repository: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *arguments], cwd=repository, capture_output=True, text=True, check=False
    )


def _repository() -> tuple[Path, Path]:
    """The repository's top level and the current directory relative to it."""
    found = _git(Path.cwd(), "rev-parse", "--show-toplevel")
    if found.returncode != 0:
        raise RunError("not inside a git repository: A/B checks revisions out with git worktree")
    top = Path(found.stdout.strip())
    return top, Path.cwd().resolve().relative_to(top.resolve())


def _commit(repository: Path, revision: str) -> str:
    found = _git(repository, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if found.returncode != 0 or not found.stdout.strip():
        raise RunError(f"unknown revision {revision!r} (git rev-parse found no such commit)")
    return found.stdout.strip()


def _dirty_files(repository: Path) -> list[str]:
    status = _git(repository, "status", "--porcelain", "--untracked-files=no")
    return [line[3:] for line in status.stdout.splitlines() if line.strip()]


@contextmanager
def worktrees(repository: Path, commits: Mapping[str, str]) -> Iterator[dict[str, Path]]:
    """Temporary detached worktrees, one per side; removed on exit, Ctrl-C included."""
    scratch = Path(tempfile.mkdtemp(prefix="pytest-energy-ab-"))
    made: dict[str, Path] = {}
    try:
        for side, commit in commits.items():
            path = scratch / side
            added = _git(repository, "worktree", "add", "--detach", str(path), commit)
            if added.returncode != 0:
                raise RunError(
                    f"git worktree add {commit[:12]} failed: {_last_error(added.stderr)}"
                )
            made[side] = path
        yield made
    finally:
        for path in made.values():
            _git(repository, "worktree", "remove", "--force", str(path))
        shutil.rmtree(scratch, ignore_errors=True)
        _git(repository, "worktree", "prune")


def meter_kinds(document: Mapping[str, Any]) -> dict[str, str]:
    """meter → kind of the meters a results document's tests ran."""
    return {
        meter: view["kind"]
        for record in document["tests"].values()
        for meter, view in record["meters"].items()
    }


def _recorded_side(
    documents: Sequence[Mapping[str, Any]], label: str, unit: str = "pair"
) -> dict[str, dict[str, Recorded]]:
    """node id → meter → Recorded whose record holds one session per document, in order
    (``unit``: what each document is, a ``pair`` of A/B or a ``session`` of check)."""
    last = documents[-1]
    machine = last.get("machine", {})
    versions = machine.get("versions", {}) if isinstance(machine, Mapping) else {}
    descriptions = {item.get("name"): item for item in last.get("meters", [])}
    snapshot: dict[str, dict[str, Recorded]] = {}
    for nodeid, record in last["tests"].items():
        for meter, view in record["meters"].items():
            sessions = []
            for number, document in enumerate(documents, start=1):
                other = document["tests"].get(nodeid, {}).get("meters", {}).get(meter)
                if other is None:
                    break
                provenance = {unit: number, "time": document.get("created"), "side": label}
                sessions.append(session_item(other, record.get("usage") or [], provenance))
            if len(sessions) != len(documents):
                continue
            provenance_of = Provenance(
                source=label,
                profile=profile_from_results(last, meter, view["kind"]),
                meter=descriptions.get(meter, {}),
                versions=versions,
            )
            snapshot.setdefault(nodeid, {})[meter] = Recorded(
                {**record, "sessions": sessions}, provenance_of
            )
    return snapshot


def judge_pairs(
    base: Sequence[Mapping[str, Any]],
    head: Sequence[Mapping[str, Any]],
    *,
    base_label: str,
    head_label: str,
    gate: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    tolerance: Any = None,
    interleaved: bool = False,
) -> ComparisonReport:
    """Compare HEAD's results documents with BASE's, pair by pair (pure data, no I/O)."""
    pairs = len(head)
    kinds = meter_kinds(head[-1])
    return compare_snapshots(
        _recorded_side(head, head_label),
        _recorded_side(base, base_label),
        gate=parse_gate(gate, kinds, "--gate"),
        alpha=alpha,
        tolerance=tolerance,
        paired=True,
        provenance=f"A/B, {pairs} pairs" + (", interleaved" if interleaved else ""),
    )


def command_ab(args: argparse.Namespace) -> int:
    """``pytest-energy ab``: see the module docstring."""
    pairs = _count(args.pairs, "--pairs", MIN_SESSIONS)
    alpha = parse_alpha(args.alpha, "--alpha")
    tolerance = parse_tolerance(args.tolerance, "--tolerance") if args.tolerance else None
    pytest_args = list(getattr(args, "passthrough", []))
    repository, relative = _repository()
    refuse_overwriting_inputs({"--json": args.json, "--markdown": args.markdown})
    base = _commit(repository, args.base)
    if args.head is None:
        dirty = _dirty_files(repository)
        if dirty:
            raise RunError(
                f"the working tree has uncommitted changes ({', '.join(dirty[:3])}"
                f"{', ...' if len(dirty) > 3 else ''}): commit or stash them, or name HEAD"
            )
        head = _commit(repository, "HEAD")
        head_name = "HEAD"
    else:
        head = _commit(repository, args.head)
        head_name = args.head
    if args.interleave and _uses_xdist(pytest_args):
        raise RunError(
            "--interleave runs one test at a time on each side, taking turns: drop pytest-xdist's "
            "-n / --numprocesses from the pytest arguments"
        )
    labels = {"base": f"BASE {args.base} ({base[:12]})", "head": f"HEAD {head_name} ({head[:12]})"}
    seed = args.seed if args.seed is not None else f"{base}{head}"
    order = random.Random(seed)
    documents: dict[str, list[Mapping[str, Any]]] = {"base": [], "head": []}
    try:
        with (
            worktrees(repository, {"base": base, "head": head}) as trees,
            tempfile.TemporaryDirectory(prefix="pytest-energy-ab-results-") as scratch,
        ):
            extra = [f"--energy-baselines={Path(scratch, 'no-baselines')}"]
            for pair in range(1, pairs + 1):
                sides = ["base", "head"]
                order.shuffle(sides)
                how = "taking turns" if args.interleave else "then"
                print(f"pair {pair}/{pairs}: {sides[0]} {how} {sides[1]}", flush=True)
                places = [
                    (trees[side] / relative, Path(scratch, f"{side}-{pair}.json")) for side in sides
                ]
                if args.interleave:
                    sessions = run_interleaved_pair(places, pytest_args, Path(scratch), extra)
                else:
                    sessions = [
                        run_session(where, pytest_args, results, extra) for where, results in places
                    ]
                for side, session in zip(sides, sessions, strict=True):
                    documents[side].append(_check_session(session, labels[side]))
    except KeyboardInterrupt:
        print("pytest-energy ab: interrupted; worktrees removed, nothing written", file=sys.stderr)
        return 2
    report = judge_pairs(
        documents["base"],
        documents["head"],
        base_label=labels["base"],
        head_label=labels["head"],
        gate=args.gate,
        alpha=alpha,
        tolerance=tolerance,
        interleaved=args.interleave,
    )
    for line in summary_lines(report, args.fail_on_improvement):
        print(line)
    results = {
        **documents["head"][-1],
        "comparison": report.to_dict(),
        "ab": {
            "base": {"revision": args.base, "commit": base},
            "head": {"revision": head_name, "commit": head},
            "pairs": pairs,
            "seed": str(seed),
            "interleaved": bool(args.interleave),
        },
    }
    _write(results, report, args)
    failing = report.regressed or (args.fail_on_improvement and report.improved)
    return 1 if failing else 0


# --- check ---------------------------------------------------------------------------------------


def committed_baselines(
    directory: Path, document: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Recorded]], list[Path]]:
    """The baseline snapshot of every meter ``document`` ran, from the files of its profiles in
    ``directory``; and the files looked for (read or missing)."""
    files: list[BaselineFile | None] = []
    looked: list[Path] = []
    for meter, kind in sorted(meter_kinds(document).items()):
        profile = profile_from_results(document, meter, kind)
        path = baseline_path(directory, profile)
        looked.append(path)
        try:
            files.append(load_baseline(path, profile))
        except BaselineError as error:
            raise RunError(str(error)) from None
    return merged_snapshot(files), looked


def command_check(args: argparse.Namespace) -> int:
    """``pytest-energy check``: see the module docstring."""
    sessions = _count(args.sessions, "--sessions", 1)
    alpha = parse_alpha(args.alpha, "--alpha")
    tolerance = parse_tolerance(args.tolerance, "--tolerance") if args.tolerance else None
    pytest_args = list(getattr(args, "passthrough", []))
    directory = Path(args.baselines)
    if not directory.is_dir():
        raise RunError(
            f"--baselines {args.baselines}: no such directory; record a baseline first "
            f"(pytest-energy record --sessions 5) or name the directory that holds it"
        )
    refuse_overwriting_inputs({"--json": args.json, "--markdown": args.markdown})
    documents: list[Mapping[str, Any]] = []
    baseline: dict[str, dict[str, Recorded]] = {}
    looked: list[Path] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pytest-energy-check-") as scratch:
            empty = Path(scratch, "no-baselines")
            for index in range(1, sessions + 1):
                print(f"session {index}/{sessions}: pytest --energy", flush=True)
                results = Path(scratch, f"session-{index}.json")
                session = run_session(
                    Path.cwd(), pytest_args, results, [f"--energy-baselines={empty}"]
                )
                documents.append(_check_session(session, f"session {index}"))
                if index == 1:  # the profiles are known now: stop early without a baseline
                    baseline, looked = committed_baselines(directory, documents[0])
                    if not baseline:
                        raise RunError(
                            f"no baseline for this machine's profiles "
                            f"({', '.join(str(path) for path in looked)}): record one with "
                            f"`pytest-energy record --sessions 5 -- PYTEST ARGS`"
                        )
    except KeyboardInterrupt:
        print("pytest-energy check: interrupted; nothing written", file=sys.stderr)
        return 2
    kinds = meter_kinds(documents[-1])
    label = f"this tree, {sessions} session(s)"
    report = compare_snapshots(
        _recorded_side(documents, label, unit="session"),
        baseline,
        gate=parse_gate(args.gate, kinds, "--gate"),
        alpha=alpha,
        tolerance=tolerance,
        head_sessions=sessions,
        provenance=f"{sessions} sessions against the baseline",
    )
    for line in summary_lines(report, args.fail_on_improvement):
        print(line)
    results = {
        **documents[-1],
        "comparison": report.to_dict(),
        "check": {"sessions": sessions, "baselines": [str(path) for path in looked]},
    }
    _write(results, report, args)
    failing = report.regressed or (args.fail_on_improvement and report.improved)
    return 1 if failing else 0


def _write(results: Mapping[str, Any], report: ComparisonReport, args: argparse.Namespace) -> None:
    from pytest_energy.report.outputs import report_settings, write_outputs
    from pytest_energy.results import write_json_atomic

    if args.json:
        print(f"results written to {write_json_atomic(args.json, results)}")
    if args.markdown:
        settings = report_settings(markdown=args.markdown)
        for path in write_outputs(results, settings, report):
            print(f"markdown written to {path}")
