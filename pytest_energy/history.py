"""The recorded history of each test's energy: every baseline commit and every kept session.

Two sources, oldest first, merged per test and profile (a profile names the meter and, for
timed meters, the hardware: figures of different profiles never share a series):

- the baseline files' git history: each commit that changed ``baselines/<profile>.json``
  contributes each test's entry as it was at that commit (and the working tree's file, when
  it differs from the last commit);
- within an entry, the per-session figures a noisy meter keeps under ``"sessions"`` (a list,
  oldest first, each with ``tec_joules``, ``iec_joules_per_sample``, ``e_mui_joules``
  {usage: J} and ``provenance`` {commit, branch, time, dirty, ...}). An entry without that list
  counts as one session, provenance from its ``recorded`` block.

The same session seen in several commits of the file is one point. Reading the documents is
pure (``points_from_document``); only ``collect_history`` runs git.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_energy.errors import ConfigError
from pytest_energy.gate.sessions import entry_sessions

BASELINE_SCHEMA = "pytest-energy/baseline"
WORKING_TREE = "working tree"


@dataclass(frozen=True)
class Point:
    """One recorded session of one test under one profile, with its figures (J, J/sample)."""

    test: str
    profile: str
    meter: str
    kind: str
    time: str  # ISO 8601, the session's (or the save's) time
    commit: str | None  # the code the figures were measured on
    dirty: bool | None
    source: str  # where it was read: "<commit> baselines/x.json" or "working tree"
    tec_joules: float | None
    iec_joules_per_sample: float | None
    e_mui_joules: Mapping[float, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two points the same session, wherever they were read."""
        return (
            self.test,
            self.profile,
            self.time,
            self.commit,
            self.tec_joules,
            self.iec_joules_per_sample,
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _usage_map(entries: Any) -> dict[float, float]:
    """E(MUI) in joules by usage, from a ``full_cycle`` list or an ``e_mui_joules`` mapping."""
    found: dict[float, float] = {}
    if isinstance(entries, Mapping):
        for usage, joules in entries.items():
            try:
                mui = float(usage)
            except (TypeError, ValueError):
                continue
            if _number(joules) is not None:
                found[mui] = float(joules)
    elif isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, Mapping):
                mui, joules = _number(entry.get("usage")), _number(entry.get("joules"))
                if mui is not None and joules is not None:
                    found[mui] = joules
    return found


def points_from_document(document: Any, source: str) -> Iterator[Point]:
    """Every session point of one baseline document (nothing from anything else)."""
    if not isinstance(document, Mapping) or document.get("schema") != BASELINE_SCHEMA:
        return
    profile = document.get("profile") or {}
    profile_name = str(profile.get("name", "?"))
    tests = document.get("tests")
    if not isinstance(tests, Mapping):
        return
    for test, entry in tests.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("meters"), Mapping):
            continue
        recorded = entry.get("recorded") if isinstance(entry.get("recorded"), Mapping) else {}
        for meter, view in entry["meters"].items():
            if not isinstance(view, Mapping):
                continue
            kind = str(view.get("kind", profile.get("kind", "?")))
            common = {"test": str(test), "profile": profile_name, "meter": meter, "kind": kind}
            try:
                sessions = entry_sessions(entry, meter)
            except (KeyError, TypeError, ValueError):
                continue
            for session in sessions:
                if not isinstance(session, Mapping):
                    continue
                provenance = session.get("provenance")
                provenance = provenance if isinstance(provenance, Mapping) else {}
                yield Point(
                    **common,
                    time=str(provenance.get("time") or recorded.get("date") or ""),
                    commit=provenance.get("commit"),
                    dirty=provenance.get("dirty"),
                    source=source,
                    tec_joules=_number(session.get("tec_joules")),
                    iec_joules_per_sample=_number(session.get("iec_joules_per_sample")),
                    e_mui_joules=_usage_map(session.get("e_mui_joules")),
                )


def merge(points: Iterable[Point]) -> dict[tuple[str, str], list[Point]]:
    """(test, profile) -> its distinct sessions, oldest first (by time, then first seen)."""
    series: dict[tuple[str, str], list[Point]] = {}
    seen: set[tuple[Any, ...]] = set()
    for point in points:
        if point.key in seen:
            continue
        seen.add(point.key)
        series.setdefault((point.test, point.profile), []).append(point)
    return {key: sorted(found, key=lambda point: point.time) for key, found in series.items()}


def _git(root: Path, *args: str) -> str | None:
    try:
        completed = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout if completed.returncode == 0 else None


def _documents_in_git(root: Path, directory: Path) -> Iterator[tuple[Any, str]]:
    """(document, source) for every committed version of every baseline file, oldest first."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None:
        return
    relative = os.path.relpath(directory.resolve(), Path(top.strip()).resolve())
    log = _git(root, "log", "--reverse", "--format=%H", "--", relative)
    for commit in (log or "").split():
        names = _git(root, "ls-tree", "--name-only", commit, f"{relative}/") or ""
        for name in names.split():
            if not name.endswith(".json"):
                continue
            text = _git(root, "show", f"{commit}:{name}")
            try:
                document = json.loads(text) if text else None
            except json.JSONDecodeError:
                continue
            yield document, f"{commit[:12]} {name}"


def collect_history(root: str | os.PathLike[str], directory: str | os.PathLike[str]) -> list[Point]:
    """Every point of the baselines in ``directory``: its git history, then the working tree."""
    root = Path(root)
    directory = root / directory
    points: list[Point] = []
    for document, source in _documents_in_git(root, directory):
        points.extend(points_from_document(document, source))
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: cannot read it as a baseline file ({error})") from None
        points.extend(points_from_document(document, WORKING_TREE))
    return points
