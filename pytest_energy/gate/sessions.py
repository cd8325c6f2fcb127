"""Session figures: what one pytest session measured of one test under one meter.

The noisy rules (``rules.judge_history``, ``rules.judge_paired``) compare sessions, so a noisy
meter's baseline entry keeps the figures of its last sessions under ``"sessions"`` (oldest
first)::

    {"tec_joules": 41.2, "iec_joules_per_sample": 0.0031,
     "e_mui_joules": {"1000000.0": 3141.2}, "inference_joules_per_sample": [per round],
     "provenance": {"commit", "branch", "time", "dirty", "versions", "machine"}}

Entries written before sessions existed hold one session: the entry's own figures
(``entry_sessions`` returns them as a list of one). Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_energy.record import MeterFigures

DEFAULT_KEEP_SESSIONS = 10
"""Sessions kept per baseline entry of a noisy meter (``--energy-keep-sessions``)."""
VERSIONED_LIBRARIES = ("torch", "torchvision")
"""A session recorded with other versions of these measured other code: not the same history."""


def usage_key(usage: float) -> str:
    """The JSON key of a usage in ``e_mui_joules``: ``repr(float(usage))``, e.g. ``"1000000.0"``."""
    return repr(float(usage))


def session_item(
    view: Mapping[str, Any], usage: Sequence[float], provenance: Mapping[str, Any]
) -> dict[str, Any]:
    """One session's figures from a meter's view of a test record (the results schema)."""
    figures = MeterFigures.from_json(view)
    rounds = list((view.get("inference") or {}).get("joules_per_sample") or [])
    return {
        "tec_joules": figures.tec_joules,
        "iec_joules_per_sample": figures.iec_joules_per_sample,
        "e_mui_joules": {
            usage_key(mui): figures.full_cycle_joules(mui)
            for mui in usage
            if figures.iec_joules_per_sample is not None
        },
        "inference_joules_per_sample": [float(value) for value in rounds],
        "provenance": dict(provenance),
    }


def _legacy_provenance(entry: Mapping[str, Any]) -> dict[str, Any]:
    recorded = entry.get("recorded") or {}
    return {
        "commit": recorded.get("commit"),
        "branch": recorded.get("branch"),
        "time": recorded.get("time") or recorded.get("date"),
        "dirty": recorded.get("dirty"),
        "versions": dict(recorded.get("versions") or {}),
        "machine": recorded.get("machine"),
    }


def entry_sessions(entry: Mapping[str, Any], meter: str | None = None) -> list[dict[str, Any]]:
    """The sessions of a baseline entry (or a results record), oldest first.

    An entry without ``"sessions"`` (a results record, or a baseline written before sessions
    existed) is one session: its own figures, with ``recorded`` as the provenance.
    """
    sessions = entry.get("sessions")
    if isinstance(sessions, list) and sessions:
        return [dict(session) for session in sessions]
    meters = entry.get("meters") or {}
    name = meter if meter is not None else next(iter(meters), None)
    if name is None or name not in meters:
        return []
    return [session_item(meters[name], entry.get("usage") or [], _legacy_provenance(entry))]


def session_figure(
    session: Mapping[str, Any], quantity: str, usage: float | None = None
) -> float | None:
    """``tec``, ``iec`` or ``full_cycle`` (at ``usage``) of one session; ``None`` if absent."""
    tec = session.get("tec_joules")
    iec = session.get("iec_joules_per_sample")
    if quantity == "tec":
        return None if tec is None else float(tec)
    if quantity == "iec":
        return None if iec is None else float(iec)
    if quantity == "full_cycle" and usage is not None and tec is not None and iec is not None:
        stored = (session.get("e_mui_joules") or {}).get(usage_key(usage))
        if stored is not None:
            return float(stored)
        return MeterFigures("", float(tec), float(iec)).full_cycle_joules(usage)
    return None


def same_versions(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Both sessions ran the same torch and torchvision (unknown versions never disagree)."""
    old = (first.get("provenance") or {}).get("versions") or {}
    new = (second.get("provenance") or {}).get("versions") or {}
    return all(
        old.get(name) is None or new.get(name) is None or old.get(name) == new.get(name)
        for name in VERSIONED_LIBRARIES
    )


def merge_sessions(
    old_entry: Mapping[str, Any] | None, new_entry: Mapping[str, Any], keep: int
) -> list[dict[str, Any]]:
    """The history after a save: the old sessions that ran the same library versions, then the
    new entry's sessions, trimmed to the last ``keep``."""
    new_sessions = entry_sessions(new_entry)
    if old_entry is None or not new_sessions:
        return new_sessions[-keep:]
    old_sessions = [
        session for session in entry_sessions(old_entry) if same_versions(session, new_sessions[-1])
    ]
    return (old_sessions + new_sessions)[-keep:]
