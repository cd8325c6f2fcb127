"""Two pytest sessions taking turns window by window, so an A/B pair shares the machine's drift.

On a shared machine the speed of the same work drifts over seconds to minutes (co-tenants,
clocks): two sessions run one after the other see different moments of that drift, and their
ratio is as noisy as either side. ``pytest-energy ab --interleave`` starts both sessions of a
pair at once and lets only one of them run at any moment, handing over at the end of every
measured window: the first side runs up to the end of its first window (a train phase, an
inference round) while the other waits, then the other side runs up to the end of its first
window, and so on. The two measurements of each window are then a fraction of a second to a
few seconds apart, and their ratio cancels what the drift did to both
(``benchmarks/false_alarms.py``, README "Baselines and the regression gate").

The runner gives each session a turn file and its role (``TURNS_VARIABLE``, ``"PATH:ROLE"``).
The turn file holds the number of turns both sides have ended; the side of role ``r`` runs its
``k``-th turn when the count is ``2k + r``. A side that ends (or dies: the runner marks it)
leaves a ``PATH.doneR`` marker, and the other runs on without waiting. Only one side runs at a
time, so neither needs pinning or fewer threads.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

TURNS_VARIABLE = "PYTEST_ENERGY_TURNS"
POLL_SECONDS = 0.005
"""How often a waiting side looks at the turn file: a sleeping poll costs next to no CPU."""


def done_marker(turn_file: Path, role: int) -> Path:
    """The file whose presence says side ``role`` takes no more turns."""
    return turn_file.with_name(f"{turn_file.name}.done{role}")


def wait_for_sides(processes: Sequence[subprocess.Popen], turn_file: Path) -> None:
    """Wait for both sides of a pair (role = index); mark each done as it ends, so a side that
    ended, or died, never leaves the other waiting for its turn."""
    running = dict(enumerate(processes))
    while running:
        for role, process in list(running.items()):
            if process.poll() is not None:
                done_marker(turn_file, role).touch()
                del running[role]
        time.sleep(0.05)


def parse_turns(value: str) -> tuple[Path, int]:
    """``"PATH:ROLE"`` → (turn file, role 0 or 1); a ValueError names what is wrong."""
    path, _, role = value.rpartition(":")
    if not path or role not in ("0", "1"):
        raise ValueError(f"{TURNS_VARIABLE}={value!r}: expected PATH:0 or PATH:1")
    return Path(path), int(role)


class TurnTaking:
    """One side's view of the turn file: wait for a turn, run, hand the turn over."""

    def __init__(self, turn_file: Path, role: int) -> None:
        self.turn_file = turn_file
        self.role = role
        self.turns_ended = 0
        self._other_done = done_marker(turn_file, 1 - role)

    def _count(self) -> int:
        try:
            return int(self.turn_file.read_text() or 0)
        except (OSError, ValueError):
            return 0  # not written yet, or caught between write and rename: look again

    def wait(self) -> None:
        """Block until it is this side's turn (or the other side has ended)."""
        mine = 2 * self.turns_ended + self.role
        while self._count() < mine and not self._other_done.exists():
            time.sleep(POLL_SECONDS)

    def hand_over(self) -> None:
        """This side's turn ended: the other side's turn."""
        self.turns_ended += 1
        count = 2 * self.turns_ended - 1 + self.role
        scratch = self.turn_file.with_name(f"{self.turn_file.name}.{self.role}.tmp")
        scratch.write_text(str(count))
        os.replace(scratch, self.turn_file)

    def exchange(self) -> None:
        """A measured window ended: hand the turn over and wait for the next one."""
        self.hand_over()
        self.wait()

    def finish(self) -> None:
        """This side runs no more turns: the other side need not wait for it."""
        done_marker(self.turn_file, self.role).touch()


def turns_from_environment() -> TurnTaking | None:
    """The turn taking the ``ab`` runner asked for, or None when this session runs alone."""
    value = os.environ.get(TURNS_VARIABLE)
    if not value:
        return None
    turn_file, role = parse_turns(value)
    return TurnTaking(turn_file, role)


class TurnTakingPlugin:
    """Registered by ``plugin.py`` when the ``ab`` runner asked for turns.

    The session waits for its first turn before any test runs; each measured window then ends
    a turn (``EnergySession.turns``); the session's end frees the other side.
    """

    def __init__(self, turns: TurnTaking) -> None:
        self.turns = turns

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.turns.wait()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.turns.finish()
