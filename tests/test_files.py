"""The one atomic writer every output uses: whole files, no input overwritten, clear errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_energy.errors import EnergyError, OutputError
from pytest_energy.files import (
    GITIGNORE_PATTERN,
    check_output_path,
    non_finite_figures,
    remove_stale_temporaries,
    temporary_name,
    write_json_atomic,
    write_text_atomic,
)

REPOSITORY = Path(__file__).resolve().parents[1]


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "results.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    write_json_atomic(target, {"new": True})

    assert json.loads(target.read_text()) == {"new": True}
    assert sorted(path.name for path in target.parent.iterdir()) == ["results.json"]


def test_a_parent_that_is_a_regular_file_is_named_and_nothing_is_created(tmp_path):
    blocker = tmp_path / "some-file"
    blocker.write_text("keep me\n")

    with pytest.raises(OutputError, match=r"--energy-markdown .*some-file is a regular file"):
        write_text_atomic(blocker / "out.md", "# report\n", "--energy-markdown")
    assert blocker.read_text() == "keep me\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["some-file"]


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path):
    baseline = tmp_path / "baselines" / "counted.json"
    baseline.parent.mkdir()
    baseline.write_text('{"schema": "baseline"}\n')

    with pytest.raises(OutputError, match="also an input of this run"):
        write_json_atomic(baseline, {"schema": "results"}, "--energy-json", inputs=[baseline])
    assert baseline.read_text() == '{"schema": "baseline"}\n'


def test_a_directory_given_as_the_output_file_is_refused(tmp_path):
    with pytest.raises(OutputError, match="is a directory; give a file path"):
        check_output_path(tmp_path, "--energy-json")


def test_the_error_is_an_energy_error_and_an_os_error(tmp_path):
    """Callers that already handle a failed write (``except OSError``) handle this one."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError) as caught:
        write_text_atomic(blocker / "x.md", "", "--energy-markdown")
    assert isinstance(caught.value, EnergyError)


def test_infinite_figures_are_refused_naming_the_test_and_the_figure(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("{}\n")
    document = {"tests": {"t.py::test_a": {"meters": {"cputime": {"tec_joules": math.inf}}}}}

    assert non_finite_figures(document) == ["tests.t.py::test_a.meters.cputime.tec_joules = inf"]
    with pytest.raises(OutputError, match=r"t\.py::test_a\.meters\.cputime\.tec_joules = inf"):
        write_json_atomic(target, document, "--energy-json")
    assert target.read_text() == "{}\n"


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("old\n")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OutputError, match=r"report\.md.*No space left on device"):
        write_text_atomic(target, "new\n", "--energy-markdown")
    assert target.read_text() == "old\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.md"]


def test_temporaries_match_the_gitignore_pattern_of_the_repository(tmp_path):
    name = temporary_name(tmp_path / "counted-cpu.json")
    assert Path(name).match(GITIGNORE_PATTERN)
    assert GITIGNORE_PATTERN in (REPOSITORY / ".gitignore").read_text().splitlines()


def test_a_temporary_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "cputime.json"
    # a writer killed with -9 mid-write: its process is gone, its temporary stayed
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = tmp_path / f".pytest-energy-cputime.json.{dead.stdout.strip()}.abcd1234.tmp"
    orphan.write_text('{"half": ')
    live = tmp_path / f".pytest-energy-cputime.json.{os.getpid()}.beef0000.tmp"
    live.write_text("a live writer's temporary")

    write_json_atomic(target, {"whole": True})

    assert not orphan.exists()
    assert live.exists(), "a live writer's temporary is never removed"
    assert remove_stale_temporaries(target) == []
