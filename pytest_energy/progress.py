"""A live progress line for long training phases, drawn without garbling pytest's output.

A training loop inside ``energy.train(...)`` calls ``energy.progress(epoch=..., batch=...)``;
the terminal shows, on a line of its own that rewrites itself::

    ⚡ test_fpgm · finetune · epoch 2/10 · batch 37/391 · 12.4 s · 153 J so far (cputime)

Only on a terminal (a TTY that understands ANSI cursor moves) and never under ``-q``: in CI
logs and piped output nothing is written. The line opens below whatever pytest has written so
far, updates in place at most every ``MIN_INTERVAL_SECONDS``, and when the phase ends it is
erased and the cursor put back where pytest left it, so pytest's dots and progress column
continue as if nothing happened.

Joules so far come from meters that can be read without closing their window: a meter opts in
with a ``peek() -> Reading`` method (the open window so far). Where no meter in use can, the
line shows elapsed time and says the joules come when the phase ends.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from pytest_energy.report.units import format_energy

MIN_INTERVAL_SECONDS = 0.25
"""Redraw at most four times a second: a call in between costs one clock read."""
_ERASE_LINE = "\r\x1b[2K"
_UP_ONE_LINE = "\x1b[1A"


def peekable(meters: Sequence[Any]) -> list[Any]:
    """The meters that can report an open window's joules (they define ``peek()``)."""
    return [meter for meter in meters if callable(getattr(meter, "peek", None))]


def joules_so_far(meters: Sequence[Any]) -> list[tuple[str, float]]:
    """(meter name, joules) of the open window for each meter that can be peeked at."""
    figures = []
    for meter in peekable(meters):
        try:
            reading = meter.peek()
        except Exception:  # a failed peek must never break the user's training loop
            continue
        if reading is not None:
            figures.append((meter.name, float(reading.joules)))
    return figures


def format_progress(
    where: str,
    phase: str | None,
    elapsed_seconds: float | None,
    fields: dict[str, Any],
    joules: Sequence[tuple[str, float]] | None,
) -> str:
    """The text of one progress line (without terminal control codes)."""
    parts = [f"⚡ {where.rsplit('::', 1)[-1]}"]
    if phase:
        parts.append(phase)
    counters = dict(fields)
    for name, total_name in (("epoch", "epochs"), ("batch", "batches")):
        if counters.get(name) is not None:
            value = counters.pop(name)
            total = counters.pop(total_name, None)
            parts.append(f"{name} {value}" + (f"/{total}" if total is not None else ""))
        else:
            counters.pop(total_name, None)
    for name, value in counters.items():
        parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    if elapsed_seconds is not None:
        parts.append(f"{elapsed_seconds:.1f} s")
    if joules is None:
        pass
    elif joules:
        parts.append(", ".join(f"{format_energy(value)} so far ({name})" for name, value in joules))
    elif phase:
        parts.append("joules at phase end (meters not readable mid-window)")
    return " · ".join(parts)


class ProgressLine:
    """One self-rewriting status line on a terminal; every method is a no-op when disabled."""

    def __init__(
        self,
        stream: TextIO | None,
        column: Callable[[], int] = lambda: 0,
        width: Callable[[], int] = lambda: 80,
        suspend_capture: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._column = column
        self._width = width
        self._suspend_capture = suspend_capture
        self._clock = clock
        self._open_at_column: int | None = None
        self._last_draw = -float("inf")

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    @property
    def showing(self) -> bool:
        return self._open_at_column is not None

    def due(self) -> bool:
        """Whether a redraw is due (the throttle); cheap enough to call every batch."""
        return self.enabled and self._clock() - self._last_draw >= MIN_INTERVAL_SECONDS

    def show(self, text: str, force: bool = False) -> bool:
        """Draw ``text`` on the progress line (opening it below pytest's line first)."""
        if not self.enabled or not (force or self.due()):
            return False
        limit = max(10, self._width() - 2)
        if len(text) > limit:
            text = text[: limit - 1] + "…"
        prefix = ""
        if self._open_at_column is None:
            self._open_at_column = self._column()
            prefix = "\n"
        self._write(f"{prefix}{_ERASE_LINE}{text}")
        self._last_draw = self._clock()
        return True

    def close(self) -> None:
        """Erase the line and put the cursor back at the end of pytest's line."""
        if self._open_at_column is None:
            return
        column = self._open_at_column
        self._open_at_column = None
        self._last_draw = -float("inf")
        self._write(f"{_ERASE_LINE}{_UP_ONE_LINE}\r" + (f"\x1b[{column}C" if column else ""))

    def _write(self, text: str) -> None:
        assert self._stream is not None
        suspend = self._suspend_capture() if self._suspend_capture is not None else None
        if suspend is None:
            self._stream.write(text)
            self._stream.flush()
            return
        with suspend:
            self._stream.write(text)
            self._stream.flush()


DISABLED = ProgressLine(None)
"""The line used when nothing may be drawn: not a terminal, ``-q``, or no terminal reporter."""


def progress_line_for(config: Any) -> ProgressLine:
    """The run's progress line: live on an ANSI terminal at normal verbosity, else disabled."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() < 0:
        return DISABLED
    writer = getattr(reporter, "_tw", None)
    stream = getattr(writer, "_file", None)
    if writer is None or stream is None:
        return DISABLED
    # The reporter decided at start-up; during a test fd capture makes stream.isatty() False.
    is_terminal = bool(getattr(reporter, "isatty", False))
    if not is_terminal or os.environ.get("TERM") == "dumb":
        return DISABLED
    capture = config.pluginmanager.get_plugin("capturemanager")
    return ProgressLine(
        stream,
        column=lambda: int(getattr(writer, "width_of_current_line", 0)),
        width=lambda: int(getattr(writer, "fullwidth", 80)),
        suspend_capture=capture.global_and_fixture_disabled if capture is not None else None,
    )


class PhaseProgress:
    """What the ``energy`` fixture knows for its progress line: the open phase and its start."""

    def __init__(self, where: str, line: ProgressLine = DISABLED) -> None:
        self.where = where
        self.line = line
        self.phase: str | None = None
        self.started: float | None = None

    @contextlib.contextmanager
    def phase_window(self, phase: str) -> Iterator[None]:
        """Mark ``phase`` as running; the progress line is erased when it ends."""
        self.begin(phase)
        try:
            yield
        finally:
            self.end()

    def begin(self, phase: str) -> None:
        """``phase`` started running (``phase_window`` without a generator, for hot paths)."""
        self.phase, self.started = phase, time.perf_counter()

    def end(self) -> None:
        """The running phase ended: the progress line is erased."""
        self.phase = self.started = None
        self.line.close()

    def update(self, meters: Sequence[Any] | None, fields: dict[str, Any]) -> bool:
        """Redraw the line if due; ``meters`` (None: not measuring) are peeked for joules."""
        if not self.line.due():
            return False
        elapsed = None if self.started is None else time.perf_counter() - self.started
        joules = None if meters is None or self.phase is None else joules_so_far(meters)
        shown = {name: value for name, value in fields.items() if value is not None}
        return self.line.show(format_progress(self.where, self.phase, elapsed, shown, joules))
