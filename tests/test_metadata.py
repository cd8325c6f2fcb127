"""Run metadata: commit, branch, time and dirty flag in results and baselines (pytester, git)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest

from pytest_energy.metadata import dirty_save_warning, run_metadata

COUNTED_TEST = """
import torch

def test_linear(energy):
    model = torch.nn.Linear(4, 2)
    with energy.train("fit"):
        model(torch.ones(8, 4)).sum().backward()
    energy.inference(lambda: model(torch.ones(1, 4)), samples=1)
"""

COUNTED = ["--energy", "--energy-meter", "counted", "-p", "no:cacheprovider"]


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def repo(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory that is a git repository with the test committed on ``feature``."""
    root = pytester.path
    git(root, "init", "-q", "-b", "feature")
    git(root, "config", "user.email", "dev@example.com")
    git(root, "config", "user.name", "dev")
    pytester.makepyfile(test_model=COUNTED_TEST)
    (root / ".gitignore").write_text("baselines/\n*.json\n__pycache__/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "a model")
    return pytester


def test_outside_git_the_commit_branch_and_dirty_flag_are_unknown(tmp_path: Path) -> None:
    run = run_metadata(tmp_path)
    assert run["commit"] is None and run["branch"] is None and run["dirty"] is None
    assert dt.datetime.fromisoformat(run["time"]).tzinfo is not None


def test_a_clean_checkout_is_not_dirty_and_untracked_files_do_not_count(repo) -> None:
    (repo.path / "notes.txt").write_text("untracked")
    run = run_metadata(repo.path)
    assert run["commit"] == git(repo.path, "rev-parse", "HEAD")
    assert run["branch"] == "feature"
    assert run["dirty"] is False
    assert dirty_save_warning(run) is None


def test_a_detached_head_takes_the_branch_from_the_ci(repo, monkeypatch) -> None:
    git(repo.path, "checkout", "-q", "--detach")
    monkeypatch.delenv("GITHUB_HEAD_REF", raising=False)
    monkeypatch.delenv("CI_COMMIT_REF_NAME", raising=False)
    monkeypatch.setenv("GITHUB_REF_NAME", "42/merge")
    assert run_metadata(repo.path)["branch"] == "42/merge"


def test_results_carry_the_run(repo) -> None:
    result = repo.runpytest(*COUNTED, "--energy-json", "out.json")
    result.assert_outcomes(passed=1)
    run = json.loads((repo.path / "out.json").read_text())["run"]
    assert run["commit"] == git(repo.path, "rev-parse", "HEAD")
    assert run["branch"] == "feature" and run["dirty"] is False
    assert dt.datetime.fromisoformat(run["time"]).tzinfo is not None


def test_a_baseline_saved_from_a_clean_tree_says_clean_and_warns_of_nothing(repo) -> None:
    result = repo.runpytest(*COUNTED, "--energy-save")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*dirty tree*")
    (saved,) = (repo.path / "baselines").glob("*.json")
    entry = json.loads(saved.read_text())["tests"]["test_model.py::test_linear"]
    run = entry["recorded"]["run"]
    assert run["commit"] == git(repo.path, "rev-parse", "HEAD")
    assert run["branch"] == "feature" and run["dirty"] is False


def test_a_baseline_saved_from_a_dirty_tree_says_so(repo) -> None:
    test_file = repo.path / "test_model.py"
    test_file.write_text(test_file.read_text().replace("(8, 4)", "(16, 4)"))
    result = repo.runpytest(*COUNTED, "--energy-save")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["warning: --energy-save: the baselines were recorded from a dirty tree*commit first*"]
    )
    (saved,) = (repo.path / "baselines").glob("*.json")
    entry = json.loads(saved.read_text())["tests"]["test_model.py::test_linear"]
    assert entry["recorded"]["run"]["dirty"] is True
