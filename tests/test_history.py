"""``pytest-energy history``: sessions from the baselines' git log and their ``"sessions"`` lists.

A temporary git repository gets hand-made baseline files committed over several commits: one
test whose entries carry no session list (each commit's entry is one session), one whose entry
keeps its sessions (the gate's per-session history), with a step planted in it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_energy.cli import main
from pytest_energy.history import merge, points_from_document

PLAIN = "benchmarks/test_pruning.py::test_fpgm"
KEPT = "benchmarks/test_quant.py::test_int8"


def provenance(n: int) -> dict[str, Any]:
    return {
        "commit": f"{n:02d}" * 20,
        "branch": "main",
        "time": f"2026-11-{n:02d}T10:00:00+00:00",
        "dirty": False,
    }


def session(n: int, tec: float, iec: float) -> dict[str, Any]:
    return {
        "tec_joules": tec,
        "iec_joules_per_sample": iec,
        "e_mui_joules": {"1000.0": tec + 1e3 * iec, "1000000.0": tec + 1e6 * iec},
        "provenance": provenance(n),
    }


def entry(tec: float, iec: float, n: int, sessions: list | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "kind": "estimated",
        "tec_joules": tec,
        "iec_joules_per_sample": iec,
        "full_cycle": [{"usage": 1e3, "joules": tec + 1e3 * iec, "greenness": None}],
    }
    record: dict[str, Any] = {
        "usage": [1e3],
        "meters": {"cputime": view},
        "recorded": {
            "commit": provenance(n)["commit"],
            "date": provenance(n)["time"],
            "run": provenance(n),
        },
    }
    if sessions is not None:
        record["sessions"] = sessions  # the gate keeps them per entry (one meter per profile)
    return record


def baseline(tests: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": "pytest-energy/baseline",
        "version": 1,
        "profile": {
            "name": "cputime-test-cpu-2t",
            "meter": "cputime",
            "kind": "estimated",
            "fingerprint": {},
        },
        "tests": tests,
    }


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def commit_baseline(root: Path, document: dict[str, Any], message: str) -> None:
    (root / "baselines").mkdir(exist_ok=True)
    (root / "baselines" / "cputime-test-cpu-2t.json").write_text(json.dumps(document))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


KEPT_SESSIONS = [session(n, 10.0 + 0.05 * (n % 3), 1e-3) for n in range(1, 7)] + [
    session(n, 12.0 + 0.05 * (n % 3), 1e-3) for n in range(7, 13)
]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Three commits of the baseline file, then an uncommitted change in the working tree."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "dev@example.com")
    git(tmp_path, "config", "user.name", "dev")
    commit_baseline(
        tmp_path,
        baseline({PLAIN: entry(100.0, 2e-3, 1), KEPT: entry(10.0, 1e-3, 6, KEPT_SESSIONS[:6])}),
        "first baselines",
    )
    commit_baseline(  # PLAIN unchanged: the same session, counted once
        tmp_path,
        baseline({PLAIN: entry(100.0, 2e-3, 1), KEPT: entry(12.0, 1e-3, 12, KEPT_SESSIONS)}),
        "more sessions",
    )
    commit_baseline(
        tmp_path,
        baseline({PLAIN: entry(130.0, 2e-3, 14), KEPT: entry(12.0, 1e-3, 12, KEPT_SESSIONS)}),
        "fpgm re-recorded",
    )
    document = baseline({PLAIN: entry(131.0, 2e-3, 15), KEPT: entry(12.0, 1e-3, 12, KEPT_SESSIONS)})
    (tmp_path / "baselines" / "cputime-test-cpu-2t.json").write_text(json.dumps(document))
    return tmp_path


def test_an_entry_with_sessions_gives_each_and_one_without_gives_itself() -> None:
    document = baseline(
        {PLAIN: entry(100.0, 2e-3, 1), KEPT: entry(12.0, 1e-3, 3, KEPT_SESSIONS[:3])}
    )
    series = merge(points_from_document(document, "test"))
    (plain,) = series[(PLAIN, "cputime-test-cpu-2t")]
    assert (plain.tec_joules, plain.commit, plain.kind) == (100.0, "01" * 20, "estimated")
    assert plain.e_mui_joules == {1e3: pytest.approx(102.0)}
    kept = series[(KEPT, "cputime-test-cpu-2t")]
    assert [point.time[:10] for point in kept] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert kept[0].e_mui_joules == {1e3: pytest.approx(11.05), 1e6: pytest.approx(1010.05)}


def test_documents_of_other_schemas_give_nothing() -> None:
    assert list(points_from_document({"schema": "pytest-energy/results", "tests": {}}, "x")) == []
    assert list(points_from_document([1, 2], "x")) == []


def test_history_reads_the_git_log_and_the_working_tree(repo: Path, capsys) -> None:
    assert main(["history", "--root", str(repo), "--test", "test_fpgm"]) == 0
    out = capsys.readouterr().out
    assert "benchmarks/test_pruning.py::test_fpgm — cputime (estimated)" in out
    assert "3 sessions; no change point" in out  # 100 J twice in the log is one session
    for tec in ("100", "130", "131"):
        assert f"  {tec}  " in out


def test_a_planted_step_in_the_kept_sessions_is_marked(repo: Path, capsys) -> None:
    assert main(["history", "--root", str(repo), "--test", "*int8"]) == 0
    out = capsys.readouterr().out
    assert "12 sessions; 1 change point(s)" in out
    (row,) = [line for line in out.splitlines() if "step:" in line]
    assert row.startswith("7 ") and "0707070707" in row
    assert "step: TEC +19.9%" in row or "step: TEC +20.0%" in row


def test_the_chart_is_written(repo: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    chart = tmp_path / "history.png"
    assert main(["history", "--root", str(repo), "--plot", str(chart)]) == 0
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert f"chart written to {chart}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--test", "test_nothing"], "--test 'test_nothing' matches no test with history; tests: "),
        (["--baselines", "elsewhere"], "no history: no baseline file under elsewhere/"),
        (["--plot", "chart.pdf"], "--plot 'chart.pdf': the file name must end in .png or .svg"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(repo: Path, capsys, arguments, message) -> None:
    assert main(["history", "--root", str(repo), *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("pytest-energy history: ") and message in line


def test_outside_git_the_working_tree_files_are_the_history(tmp_path: Path, capsys) -> None:
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "cputime-test-cpu-2t.json").write_text(
        json.dumps(baseline({PLAIN: entry(100.0, 2e-3, 1)}))
    )
    assert main(["history", "--root", str(tmp_path)]) == 0
    assert "1 session; no change point" in capsys.readouterr().out
