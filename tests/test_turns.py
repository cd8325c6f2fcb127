"""Two sessions taking turns window by window (``pytest-energy ab --interleave``).

Each test here logs "<side>:<test>-setup" before its measured window and "<side>:<test>" inside
it to one file, so the log shows which session ran what, in which order.
"""

import os
import subprocess
import sys

import pytest

from pytest_energy.turns import TURNS_VARIABLE, TurnTaking, done_marker, parse_turns

TESTS = """
import os

def _log(name):
    with open(os.environ["TURN_LOG"], "a") as log:
        log.write(f"{{os.environ['SIDE']}}:{{name}}\\n")

{tests}
"""
TEST = """
def test_{name}(energy):
    _log("{name}-setup")
    with energy.train("train"):
        _log("{name}")
"""


def make_tests(directory, names):
    body = "".join(TEST.format(name=name) for name in names)
    (directory / "test_turns_here.py").write_text(TESTS.format(tests=body))


def run_two_sessions(tmp_path, first_tests, second_tests, measuring=True):
    """Both sessions at once, the first side going first; returns the log's lines."""
    turn_file, log = tmp_path / "turns", tmp_path / "order.log"
    turn_file.write_text("0")
    processes = []
    for role, names in enumerate((first_tests, second_tests)):
        directory = tmp_path / f"side{role}"
        directory.mkdir()
        make_tests(directory, names)
        environment = {
            **os.environ,
            TURNS_VARIABLE: f"{turn_file}:{role}",
            "TURN_LOG": str(log),
            "SIDE": "AB"[role],
        }
        environment.pop("PYTEST_ADDOPTS", None)
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    str(directory),
                    *(["--energy", "--energy-meter", "counted"] if measuring else []),
                ],
                cwd=directory,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    for process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output.decode()
    return log.read_text().split()


def test_two_sessions_take_turns_ending_at_each_measured_window(tmp_path):
    order = run_two_sessions(tmp_path, ["a", "b"], ["a", "b"])
    assert order == [
        *["A:a-setup", "A:a", "B:a-setup", "B:a"],
        *["A:b-setup", "A:b", "B:b-setup", "B:b"],
    ]


def test_a_side_with_more_windows_runs_the_rest_alone_once_the_other_has_ended(tmp_path):
    order = run_two_sessions(tmp_path, ["a"], ["a", "b", "c"])
    assert order == [
        *["A:a-setup", "A:a", "B:a-setup", "B:a"],
        *["B:b-setup", "B:b", "B:c-setup", "B:c"],
    ]


def test_without_measured_windows_the_second_side_waits_for_the_first_to_end(tmp_path):
    order = run_two_sessions(tmp_path, ["a", "b"], ["a", "b"], measuring=False)
    assert order == ["A:a-setup", "A:a", "A:b-setup", "A:b", "B:a-setup", "B:a", "B:b-setup", "B:b"]


def test_the_turn_count_decides_whose_turn_it_is(tmp_path):
    turn_file = tmp_path / "turns"
    first, second = TurnTaking(turn_file, 0), TurnTaking(turn_file, 1)
    first.wait()  # no file yet: nothing run, the first side's turn
    first.hand_over()
    assert turn_file.read_text() == "1"
    second.wait()
    second.hand_over()
    first.wait()
    assert turn_file.read_text() == "2"
    second.finish()
    assert done_marker(turn_file, 1).exists()
    first.exchange()  # hands over and, the other side having ended, does not wait
    assert turn_file.read_text() == "3"


@pytest.mark.parametrize("value", ["", "turns", "turns:2", ":0"])
def test_a_malformed_turns_variable_names_itself(value):
    with pytest.raises(ValueError, match=TURNS_VARIABLE):
        parse_turns(value)
