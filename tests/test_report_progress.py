"""The live progress line: what it says, that it stays quiet off a terminal and under -q, and
that on a real terminal pytest's own output reads the same once the line is gone."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from types import SimpleNamespace

import pytest

from pytest_energy.meters.base import Reading
from pytest_energy.progress import (
    DISABLED,
    MIN_INTERVAL_SECONDS,
    PhaseProgress,
    ProgressLine,
    format_progress,
    progress_line_for,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class PeekableMeter:
    """A meter that can report its open window (it defines ``peek``)."""

    name = "fake"

    def peek(self) -> Reading:
        return Reading("fake", "estimated", 1.0, {"process": 153.0})


class SealedMeter:
    """A meter whose window can only be read by closing it."""

    name = "sealed"


def test_the_line_says_epoch_batch_elapsed_and_joules_so_far() -> None:
    text = format_progress(
        "tests/test_x.py::test_fpgm",
        "finetune",
        12.43,
        {"epoch": 2, "epochs": 10, "batch": 37, "batches": 391, "loss": 0.31234},
        [("cputime", 153.0)],
    )
    assert text == (
        "⚡ test_fpgm · finetune · epoch 2/10 · batch 37/391 · loss 0.3123 · 12.4 s"
        " · 153 J so far (cputime)"
    )


def test_without_a_peekable_meter_the_line_says_when_joules_come() -> None:
    text = format_progress("t::test_a", "prune", 1.0, {"epoch": 1}, [])
    assert text.endswith("joules at phase end (meters not readable mid-window)")


def test_phase_progress_peeks_only_at_meters_that_can_be_peeked_at() -> None:
    stream, clock = io.StringIO(), Clock()
    live = PhaseProgress("t::test_a", ProgressLine(stream, clock=clock))
    with live.phase_window("finetune"):
        assert live.update([PeekableMeter(), SealedMeter()], {"epoch": 1, "epochs": 3})
    assert "epoch 1/3" in stream.getvalue()
    assert "153 J so far (fake)" in stream.getvalue()
    assert "sealed" not in stream.getvalue()


def test_redraws_are_throttled_and_the_line_is_erased_where_it_was_opened() -> None:
    stream, clock = io.StringIO(), Clock()
    line = ProgressLine(stream, column=lambda: 17, clock=clock)
    assert line.show("first")
    assert not line.show("too soon")  # within MIN_INTERVAL_SECONDS
    clock.now += MIN_INTERVAL_SECONDS
    assert line.show("second")
    line.close()
    assert stream.getvalue() == (
        "\n\r\x1b[2Kfirst"  # opens a line below pytest's
        "\r\x1b[2Ksecond"  # rewrites it in place
        "\r\x1b[2K\x1b[1A\r\x1b[17C"  # erases it and returns to column 17 of pytest's line
    )


def test_a_long_line_is_cut_to_the_terminal_width() -> None:
    stream = io.StringIO()
    ProgressLine(stream, width=lambda: 20).show("x" * 100)
    assert stream.getvalue().endswith("x" * 17 + "…")


def test_the_disabled_line_writes_nothing() -> None:
    assert not DISABLED.enabled
    assert not DISABLED.show("anything", force=True)
    DISABLED.close()


def fake_config(verbosity: int, is_terminal: bool) -> SimpleNamespace:
    writer = SimpleNamespace(_file=io.StringIO(), width_of_current_line=0)
    reporter = SimpleNamespace(_tw=writer, isatty=is_terminal)
    plugins = {"terminalreporter": reporter, "capturemanager": None}
    return SimpleNamespace(
        get_verbosity=lambda: verbosity,
        pluginmanager=SimpleNamespace(get_plugin=plugins.get),
    )


@pytest.mark.parametrize(
    ("verbosity", "is_terminal", "live"),
    [(0, True, True), (1, True, True), (-1, True, False), (0, False, False)],
)
def test_the_line_is_live_only_on_a_terminal_and_not_under_quiet(
    monkeypatch, verbosity, is_terminal, live
) -> None:
    monkeypatch.setenv("TERM", "xterm")
    assert progress_line_for(fake_config(verbosity, is_terminal)).enabled is live


def test_a_dumb_terminal_gets_no_line(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    assert not progress_line_for(fake_config(0, True)).enabled


TRAINING_TEST = """
import time

def test_training(energy):
    with energy.train("finetune"):
        for batch in range(12):
            time.sleep(0.05)
            energy.progress(epoch=1, epochs=1, batch=batch + 1, batches=12)
    energy.accuracy = 0.5

def test_after():
    pass
"""


def test_off_a_terminal_the_run_output_has_no_progress_line(pytester) -> None:
    pytester.makepyfile(test_training=TRAINING_TEST)
    result = pytester.runpytest("--energy", "--energy-meter", "cputime")
    result.assert_outcomes(passed=2)
    assert "⚡ test_training" not in result.stdout.str()
    result.stdout.fnmatch_lines(["test_training.py .. *"])


def render_terminal(output: str) -> list[str]:
    """What a terminal shows after ``output``: handles \\n, \\r, erase line, up and right."""
    screen, row, column = [""], 0, 0
    tokens = re.findall(r"\x1b\[(\d*)([A-Za-z])|(\r)|(\n)|([^\x1b\r\n])", output)
    for number, command, carriage, newline, char in tokens:
        if char:
            line = screen[row].ljust(column)
            screen[row] = line[:column] + char + line[column + 1 :]
            column += 1
        elif newline:
            row, column = row + 1, 0
            if row == len(screen):
                screen.append("")
        elif carriage:
            column = 0
        elif command == "K":
            screen[row] = "" if number == "2" else screen[row][:column]
        elif command == "A":
            row = max(0, row - int(number or 1))
        elif command == "C":
            column += int(number or 1)
    return [line.rstrip() for line in screen]


def run_in_a_terminal(directory, *args: str) -> str:
    """Run pytest on a pseudo-terminal, as a person at a console would; return what it wrote."""
    leader, follower = pty.openpty()
    environment = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "PY_COLORS": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=directory,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=environment,
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def test_on_a_terminal_the_line_shows_then_leaves_pytests_output_as_it_was(tmp_path) -> None:
    (tmp_path / "test_training.py").write_text(TRAINING_TEST, encoding="utf-8")
    args = ["-p", "no:cacheprovider", "--energy", "--energy-meter", "cputime"]
    output = run_in_a_terminal(tmp_path, *args)
    assert "⚡ test_training · finetune · epoch 1/1 · batch" in output
    assert "so far (cputime)" in output  # cputime is read mid-window without closing it
    screen = render_terminal(output)
    assert not any("⚡" in line for line in screen)
    # Both dots on the file's line, as without the progress line.
    assert any(re.match(r"test_training\.py \.\. +\[100%\]$", line) for line in screen), screen
    quiet = run_in_a_terminal(tmp_path, *args, "-q")
    assert "⚡" not in quiet and "2 passed" in quiet
