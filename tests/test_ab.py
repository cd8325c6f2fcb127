"""``pytest-energy ab`` end to end on a tiny git repository, ``record`` and ``check``; bad input.

The repository's energy test does a number of matrix products set by ``work.py`` and is
measured by the ``counted`` meter, so the figures are exact and the sessions fast.
"""

import json
import subprocess

import pytest

from pytest_energy.cli import main

TEST_FILE = """
import pytest
import torch

from work import UNITS


@pytest.mark.lifecycle(usage=[1e3], tolerance=0.05)
def test_method(energy):
    matrix = torch.ones(16, 16)
    with energy.train("train"):
        for _ in range(UNITS):
            matrix @ matrix
    energy.inference(lambda: matrix @ matrix, samples=1)
"""


def git(directory, *arguments):
    return subprocess.run(
        ["git", *arguments], cwd=directory, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repository(pytester, monkeypatch):
    """A git repository with three commits: no tests, 10 units of work, 20 units of work."""
    for name, value in {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }.items():
        monkeypatch.setenv(name, value)
    root = pytester.path
    git(root, "init", "-q", "-b", "main")
    pytester.makefile(".txt", readme="a project")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "no tests yet")
    git(root, "tag", "empty")
    pytester.makepyfile(work="UNITS = 10\n", test_energy=TEST_FILE)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "energy test")
    git(root, "tag", "small")
    pytester.makepyfile(work="UNITS = 20\n")
    git(root, "commit", "-qam", "twice the training work")
    monkeypatch.chdir(root)
    return root


AB = ["--pairs", "3", "--seed", "1"]
PYTEST = ["--", "-p", "no:randomly", "--energy-meter", "counted", "--energy-rounds", "3"]


def test_ab_catches_a_regression_and_writes_the_reports(repository, capsys):
    status = main(["ab", "small", *AB, "--json", "ab.json", "--markdown", "ab.md", *PYTEST])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "pair 1/3:" in out and "pair 3/3:" in out
    assert "REGRESSED test_energy.py::test_method [counted] vs BASE small (" in out
    assert "gate counted (A/B, 3 pairs): 1 regressed" in out
    results = json.loads((repository / "ab.json").read_text())
    assert results["ab"]["pairs"] == 3
    assert results["comparison"]["provenance"] == "A/B, 3 pairs"
    assert results["comparison"]["counts"]["regressed"] == 1
    assert "BASE small" in (repository / "ab.md").read_text()
    assert git(repository, "worktree", "list").count("\n") == 0  # only the main checkout


def test_interleaved_pairs_take_turns_and_catch_the_regression(repository, capsys):
    status = main(["ab", "small", *AB, "--interleave", "--json", "ab.json", *PYTEST])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "pair 1/3:" in out and "taking turns" in out
    assert "gate counted (A/B, 3 pairs, interleaved): 1 regressed" in out
    results = json.loads((repository / "ab.json").read_text())
    assert results["ab"]["interleaved"] is True
    assert git(repository, "worktree", "list").count("\n") == 0


def test_interleaving_refuses_xdist_workers(repository, capsys):
    assert main(["ab", "small", *AB, "--interleave", *PYTEST, "-n", "2"]) == 2
    assert "drop pytest-xdist's -n" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["ab", "no-such-rev"], "unknown revision 'no-such-rev'"),
        (["ab", "small", "--pairs", "1"], "--pairs 1: at least 3 are needed"),
        (["ab", "small", "--pairs", "many"], "--pairs 'many': expected a whole number"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(repository, capsys, arguments, message):
    assert main([*arguments, *PYTEST]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0] and "Traceback" not in error[0]
    assert git(repository, "worktree", "list").count("\n") == 0


def test_a_revision_without_the_tests_is_named(repository, capsys):
    assert main(["ab", "empty", "small", "--pairs", "3", "--seed", "1", *PYTEST]) == 2
    assert "has none of the selected tests" in capsys.readouterr().err


def test_a_dirty_tree_is_refused_unless_head_is_named(repository, pytester, capsys):
    pytester.makepyfile(work="UNITS = 30\n")
    assert main(["ab", "small", *AB, *PYTEST]) == 2
    assert "uncommitted changes (work.py): commit or stash them" in capsys.readouterr().err


def test_a_test_failing_on_one_side_is_named(repository, capsys):
    subprocess.run(["git", "checkout", "-q", "-b", "broken"], cwd=repository, check=True)
    (repository / "work.py").write_text('UNITS = "ten"  # range() raises in the test\n')
    git(repository, "commit", "-qam", "break it")
    assert main(["ab", "small", *AB, *PYTEST]) == 2
    error = capsys.readouterr().err
    assert "failed on HEAD HEAD (" in error
    assert "both sides must pass to be compared" in error
    assert git(repository, "worktree", "list").count("\n") == 0


def test_ctrl_c_removes_the_worktrees(repository, capsys, monkeypatch):
    from pytest_energy.gate import runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "run_session", interrupted)
    assert main(["ab", "small", *AB, *PYTEST]) == 2
    assert "interrupted; worktrees removed, nothing written" in capsys.readouterr().err
    assert git(repository, "worktree", "list").count("\n") == 0


def test_record_saves_several_sessions(repository, capsys):
    meter = ["--", "--energy-meter", "cputime", "--energy-rounds", "3"]
    assert main(["record", "--sessions", "3", *meter]) == 0
    out = capsys.readouterr().out
    assert out.count("baseline saved:") == 3
    (path,) = (repository / "baselines").glob("cputime-*.json")
    entry = json.loads(path.read_text())["tests"]["test_energy.py::test_method"]
    assert len(entry["sessions"]) == 3


def test_check_judges_several_sessions_of_the_tree_against_the_committed_baseline(
    repository, capsys
):
    counted = ["--", "-p", "no:randomly", "--energy-meter", "counted", "--energy-rounds", "3"]
    git(repository, "checkout", "-q", "small")
    assert main(["record", "--sessions", "1", *counted]) == 0
    git(repository, "checkout", "-q", "main")  # twice the training work
    capsys.readouterr()

    status = main(["check", "--sessions", "2", "--json", "check.json", *counted])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "session 1/2: pytest --energy" in out and "session 2/2: pytest --energy" in out
    assert "REGRESSED test_energy.py::test_method [counted] vs baselines/counted.json" in out
    assert "gate counted (2 sessions against the baseline): 1 regressed" in out
    results = json.loads((repository / "check.json").read_text())
    assert results["check"]["sessions"] == 2
    assert results["comparison"]["counts"]["regressed"] == 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["check", "--baselines", "nowhere"], "--baselines nowhere: no such directory"),
        (["check", "--baselines", "."], "no baseline for this machine's profiles (counted.json)"),
        (["check", "--sessions", "0"], "--sessions 0: at least one session is needed"),
    ],
)
def test_check_without_a_baseline_is_one_clear_line_and_exit_2(
    repository, capsys, arguments, message
):
    assert main([*arguments, *PYTEST]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
