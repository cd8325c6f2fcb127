"""Baseline files: one per profile, loaded strictly, merged and saved atomically under a lock.

``baselines/<profile>.json`` (see ``pytest_energy.gate.profiles`` for the names) holds, for every
test saved under that profile, the test's record in the results schema (``results.py``)
restricted to the profile's meter, plus where it was recorded::

    {
      "schema": "pytest-energy/baseline", "version": 1,
      "profile": {"name": "cputime-amd-epyc-2t", "meter": "cputime", "kind": "estimated",
                  "fingerprint": {"cpu_model": "AMD EPYC", "cpu_threads": 2}},
      "tests": {
        "benchmarks/test_pruning.py::test_fpgm": {
          "labels": {...}, "usage": [...], "tolerance": {...}, "tau": 1.0, "accuracy": 0.83,
          "meters": {"cputime": {"kind", "phases", "tec_joules", "inference",
                                 "iec_joules_per_sample", "full_cycle", "train_repeats"?}},
          "recorded": {"commit": "1a2b...", "date": "2026-11-26T17:50:26+00:00",
                       "versions": {"torch": "2.15.0", ...}, "meter": {describe() of meter}},
          "sessions": [{"tec_joules", "iec_joules_per_sample", "e_mui_joules",
                        "inference_joules_per_sample", "provenance"}, ...]   # noisy meters
        }
      }
    }

A noisy meter's entry keeps its last K sessions (``--energy-keep-sessions``, default 10; see
``pytest_energy.gate.sessions``): each ``--energy-save`` appends one, and the gate judges a new
session against the spread between them. The top-level figures are the latest session's.

Provenance is per test because saves merge: one file can hold tests saved at different
commits. Files are written with sorted keys and indentation so a pull request shows what
moved. Everything that goes wrong raises ``BaselineError`` naming the file, and a file that
cannot be trusted is never overwritten.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from pytest_energy.errors import BaselineError
from pytest_energy.files import check_output_path
from pytest_energy.gate.compare import Provenance, Recorded
from pytest_energy.gate.profiles import Profile, profile_from_results
from pytest_energy.gate.sessions import DEFAULT_KEEP_SESSIONS, merge_sessions, session_item
from pytest_energy.machine import machine_info
from pytest_energy.metadata import run_metadata
from pytest_energy.meters.base import KINDS, capabilities
from pytest_energy.results import SCHEMA as RESULTS_SCHEMA
from pytest_energy.results import SCHEMA_VERSION as RESULTS_VERSION
from pytest_energy.results import write_json_atomic

BASELINE_SCHEMA = "pytest-energy/baseline"
BASELINE_VERSION = 1
DEFAULT_DIRECTORY = "baselines"
LOCK_TIMEOUT_SECONDS = 120.0
GITIGNORE_TEXT = (
    "# written by pytest-energy: lock files of concurrent --energy-save runs\n.*.lock\n"
    "# and temporaries of interrupted saves (the next save removes them)\n.pytest-energy-*.tmp\n"
)
_FIX_IT = (
    "fix it or delete it (a new baseline is recorded with --energy-save); it was left untouched"
)


@dataclass(frozen=True)
class BaselineFile:
    """A loaded, validated baseline file."""

    path: Path
    profile: Profile
    tests: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class SaveResult:
    """What ``save_baseline`` did: the file, the tests written and the entries pruned."""

    path: Path
    written: tuple[str, ...]
    pruned: tuple[str, ...]


def baseline_path(directory: str | os.PathLike[str], profile: Profile) -> Path:
    return Path(directory) / f"{profile.name}.json"


def run_provenance(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Commit, branch, dirty flag, UTC time, library versions and machine of this run.

    Stored with each saved test (``recorded``) and each of its sessions (``provenance``); the
    commit, branch, time and dirty flag are :func:`pytest_energy.metadata.run_metadata`'s.
    """
    run = run_metadata(directory)
    info = machine_info()
    return {
        "commit": run["commit"],
        "branch": run["branch"],
        "dirty": run["dirty"],
        "date": run["time"],
        "time": run["time"],
        "versions": info["versions"],
        "machine": {key: info[key] for key in ("cpu_model", "cpu_threads", "platform")},
        "run": run,
    }


def baseline_entry(
    record: Mapping[str, Any],
    meter: str,
    provenance: Mapping[str, Any],
    meter_description: Mapping[str, Any],
) -> dict[str, Any]:
    """A test's record as a baseline entry: only ``meter``'s view, plus ``recorded``.

    A noisy meter's entry also holds this session's figures as its one ``sessions`` item;
    ``save_baseline`` appends it to the history already in the file.
    """
    view = record["meters"][meter]
    left_out = ("meters", "sessions", "latency")  # latency: this run's wall clock, no meter's
    entry = {
        **{key: value for key, value in record.items() if key not in left_out},
        "meters": {meter: view},
        "recorded": {**provenance, "meter": dict(meter_description)},
    }
    if not capabilities(str(view.get("kind"))).deterministic:
        entry["sessions"] = [session_item(view, record.get("usage") or [], provenance)]
    return entry


def baseline_document(profile: Profile, tests: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "schema": BASELINE_SCHEMA,
        "version": BASELINE_VERSION,
        "profile": profile.to_dict(),
        "tests": {nodeid: tests[nodeid] for nodeid in sorted(tests)},
    }


# --- reading and validating ------------------------------------------------------------------


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Parse a JSON file; every failure is a ``BaselineError`` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise BaselineError(f"{path}: cannot read this {what} ({reason})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        stripped = text.strip()
        truncated = stripped.startswith(("{", "[")) and not stripped.endswith(("}", "]"))
        raise BaselineError(
            f"{path}: not valid JSON{' (truncated?)' if truncated else ''}: {error.msg} "
            f"(line {error.lineno}, column {error.colno})"
        ) from None
    except ValueError as error:
        raise BaselineError(f"{path}: not valid JSON: {error}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


class _Shape:
    """Checks one document's shape, raising ``BaselineError`` with the path of the bad value."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, expected: str, value: Any) -> BaselineError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return BaselineError(
            f"{self.source}: {where}: expected {expected}, got {shown}; not a pytest-energy "
            f"file of the expected shape"
        )

    def mapping(self, value: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, "an object", value)
        return value

    def number(self, value: Any, where: str, optional: bool = False, energy: bool = False) -> None:
        """A finite number; ``energy``: also ≥ 0 (no meter reads negative joules)."""
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(where, "a number" + (" or null" if optional else ""), value)
        if not math.isfinite(value):
            raise self.fail(where, "a finite number", value)
        if energy and value < 0:
            raise self.fail(where, "energy ≥ 0 J (a negative energy is impossible)", value)

    def numbers(self, value: Any, where: str, energy: bool = False) -> None:
        if not isinstance(value, list):
            raise self.fail(where, "a list of numbers", value)
        for index, item in enumerate(value):
            self.number(item, f"{where}[{index}]", energy=energy)

    def sessions(self, value: Any, where: str) -> None:
        """A noisy meter's session history (``pytest_energy.gate.sessions``)."""
        if not isinstance(value, list) or not value:
            raise self.fail(where, "a non-empty list of sessions", value)
        for index, session in enumerate(value):
            at = f"{where}[{index}]"
            session = self.mapping(session, at)
            self.number(session.get("tec_joules"), f"{at}.tec_joules", energy=True)
            self.number(
                session.get("iec_joules_per_sample"),
                f"{at}.iec_joules_per_sample",
                optional=True,
                energy=True,
            )
            figures = self.mapping(session.get("e_mui_joules", {}), f"{at}.e_mui_joules")
            for usage, joules in figures.items():
                self.number(joules, f"{at}.e_mui_joules[{usage!r}]", energy=True)
            self.numbers(
                session.get("inference_joules_per_sample", []),
                f"{at}.inference_joules_per_sample",
                energy=True,
            )
            self.mapping(session.get("provenance", {}), f"{at}.provenance")

    def record(self, record: Any, where: str, meter: str | None = None) -> None:
        """One test record of the results schema (the fields a comparison reads)."""
        record = self.mapping(record, where)
        meters = self.mapping(record.get("meters"), f"{where}.meters")
        if meter is not None and set(meters) != {meter}:
            raise self.fail(f"{where}.meters", f"exactly the {meter!r} meter", sorted(meters))
        self.numbers(record.get("usage", []), f"{where}.usage")
        self.number(record.get("accuracy"), f"{where}.accuracy", optional=True)
        self.number(record.get("tau", 1.0), f"{where}.tau")
        if not isinstance(record.get("tolerance", {}), Mapping):
            raise self.fail(f"{where}.tolerance", "an object", record.get("tolerance"))
        if not isinstance(record.get("labels", {}), Mapping):
            raise self.fail(f"{where}.labels", "an object", record.get("labels"))
        for name, view in meters.items():
            at = f"{where}.meters[{name!r}]"
            view = self.mapping(view, at)
            if view.get("kind") not in KINDS:
                raise self.fail(f"{at}.kind", " or ".join(KINDS), view.get("kind"))
            self.number(view.get("tec_joules"), f"{at}.tec_joules", energy=True)
            self.number(
                view.get("iec_joules_per_sample"),
                f"{at}.iec_joules_per_sample",
                optional=True,
                energy=True,
            )
            if view.get("inference") is not None:
                inference = self.mapping(view["inference"], f"{at}.inference")
                self.numbers(
                    inference.get("joules_per_sample"),
                    f"{at}.inference.joules_per_sample",
                    energy=True,
                )
            if view.get("train_repeats") is not None:
                repeats = self.mapping(view["train_repeats"], f"{at}.train_repeats")
                self.numbers(repeats.get("tec_joules"), f"{at}.train_repeats.tec_joules")
        if record.get("sessions") is not None:
            self.sessions(record["sessions"], f"{where}.sessions")
        recorded = record.get("recorded", {})
        recorded = self.mapping(recorded, f"{where}.recorded")
        self.mapping(recorded.get("versions", {}), f"{where}.recorded.versions")
        self.mapping(recorded.get("meter", {}), f"{where}.recorded.meter")

    def header(self, document: Any, schema: str, supported: int) -> Mapping[str, Any]:
        document = self.mapping(document, "the document")
        if document.get("schema") != schema:
            raise self.fail("schema", repr(schema), document.get("schema"))
        version = document.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise self.fail("version", "a whole number", version)
        if version > supported:
            raise BaselineError(
                f"{self.source}: schema version {version} was written by a newer pytest-energy "
                f"(this one reads version {supported}); upgrade pytest-energy"
            )
        if version < 1:
            raise BaselineError(f"{self.source}: unknown schema version {version}")
        return document


def validate_baseline(document: Any, source: str) -> tuple[Profile, Mapping[str, Any]]:
    """Check a baseline document's shape; returns its profile and its tests."""
    shape = _Shape(source)
    document = shape.header(document, BASELINE_SCHEMA, BASELINE_VERSION)
    profile_data = shape.mapping(document.get("profile"), "profile")
    try:
        profile = Profile.from_dict(profile_data)
    except (KeyError, TypeError) as error:
        raise shape.fail("profile", "name, meter, kind and fingerprint", profile_data) from error
    tests = shape.mapping(document.get("tests"), "tests")
    for nodeid, record in tests.items():
        shape.record(record, f"tests[{nodeid!r}]", profile.meter)
    return profile, tests


def validate_results(document: Any, source: str) -> Mapping[str, Any]:
    """Check a results document's (``--energy-json``) shape; returns it."""
    shape = _Shape(source)
    document = shape.header(document, RESULTS_SCHEMA, RESULTS_VERSION)
    tests = shape.mapping(document.get("tests"), "tests")
    for nodeid, record in tests.items():
        shape.record(record, f"tests[{nodeid!r}]")
    shape.mapping(document.get("machine", {}), "machine")
    return document


def load_baseline(path: str | os.PathLike[str], profile: Profile) -> BaselineFile | None:
    """The baseline at ``path`` for ``profile``, or ``None`` when there is no such file.

    Raises ``BaselineError`` for a file that is unreadable, not JSON, of the wrong shape or
    version, or recorded for another profile; the file is left as it is.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        document = read_json(path, "baseline file")
        recorded_profile, tests = validate_baseline(document, str(path))
    except BaselineError as error:
        raise BaselineError(f"{error}; {_FIX_IT}") from None
    if not recorded_profile.matches(profile):
        raise BaselineError(
            f"{path}: a baseline of another profile: recorded for {recorded_profile.describe()}, "
            f"this run is {profile.describe()}. Baselines never gate other hardware; {_FIX_IT}"
        )
    return BaselineFile(path=path, profile=recorded_profile, tests=dict(tests))


def other_profiles(directory: str | os.PathLike[str], profile: Profile) -> list[str]:
    """Names of the other baseline files in ``directory`` for the same meter (other hardware)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        path.name for path in directory.glob(f"{profile.meter}-*.json") if path.stem != profile.name
    )


# --- saving ---------------------------------------------------------------------------------


def check_writable(directory: str | os.PathLike[str]) -> None:
    """Fail early, before tests run, when ``--energy-save`` could not write ``directory``."""
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise BaselineError(f"--energy-save: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BaselineError(f"--energy-save: cannot write to {existing} (permission denied)")


def save_baseline(
    directory: str | os.PathLike[str],
    profile: Profile,
    entries: Mapping[str, Mapping[str, Any]],
    *,
    keep_only: Collection[str] | None = None,
    keep_sessions: int = DEFAULT_KEEP_SESSIONS,
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
) -> SaveResult:
    """Merge ``entries`` (node id → baseline entry) into ``profile``'s file, atomically.

    Under a lock (so concurrent runs lose nothing) the file is read again, the entries replace
    those of the same tests, the others stay, and the result is renamed over the old file.
    An entry with ``sessions`` (noisy meters) appends them to the history of the same test,
    keeping the last ``keep_sessions`` recorded with the same torch and torchvision.
    ``keep_only``: the node ids that still exist; other entries are pruned (``--energy-prune``).
    A corrupt or foreign file is refused (``BaselineError``), never overwritten.
    """
    directory = Path(directory)
    path = baseline_path(directory, profile)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        gitignore = directory / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text(GITIGNORE_TEXT, encoding="utf-8")
        lock = filelock.FileLock(str(directory / f".{path.name}.lock"))
        with lock.acquire(timeout=lock_timeout_seconds):
            try:
                existing = load_baseline(path, profile)
            except BaselineError as error:
                raise BaselineError(f"--energy-save refused: {error}") from None
            tests = dict(existing.tests) if existing else {}
            pruned = tuple(
                sorted(
                    nodeid
                    for nodeid in tests
                    if keep_only is not None and nodeid not in keep_only and nodeid not in entries
                )
            )
            for nodeid in pruned:
                del tests[nodeid]
            for nodeid, entry in entries.items():
                merged = dict(entry)
                if entry.get("sessions"):
                    merged["sessions"] = merge_sessions(tests.get(nodeid), entry, keep_sessions)
                tests[nodeid] = merged
            write_json_atomic(path, baseline_document(profile, tests))
    except filelock.Timeout:
        raise BaselineError(
            f"--energy-save: {path} stayed locked by another run for {lock_timeout_seconds:g} s; "
            f"nothing was saved"
        ) from None
    except OSError as error:
        raise BaselineError(
            f"--energy-save: cannot write {path} ({error.strerror or error}); nothing was saved"
        ) from None
    return SaveResult(path=path, written=tuple(sorted(entries)), pruned=pruned)


def refuse_overwriting_inputs(
    outputs: Mapping[str, str | os.PathLike[str] | None],
    inputs: Collection[str | os.PathLike[str]] = (),
) -> None:
    """No output may replace an input or a baseline file, or lie under a regular file.

    ``outputs``: flag → path (``None``: not asked for). A path that is one of ``inputs`` or an
    existing pytest-energy baseline file is refused before anything runs or is written
    (``OutputError`` from :func:`pytest_energy.files.check_output_path`, else ``BaselineError``).
    """
    for flag, path in outputs.items():
        if path is None or str(path) == "-":
            continue
        check_output_path(path, flag, inputs)
        target = Path(path).resolve()
        if target.is_file() and target.suffix == ".json":
            try:
                document = read_json(target)
            except BaselineError:
                continue
            if isinstance(document, Mapping) and document.get("schema") == BASELINE_SCHEMA:
                raise BaselineError(
                    f"{flag} {path}: is a baseline file; an output never replaces one "
                    f"(choose another path)"
                )


# --- snapshots: what a comparison reads -------------------------------------------------------


def baseline_snapshot(baseline: BaselineFile) -> dict[str, dict[str, Recorded]]:
    """node id → {meter: Recorded} of a loaded baseline file."""
    snapshot: dict[str, dict[str, Recorded]] = {}
    for nodeid, record in baseline.tests.items():
        recorded = record.get("recorded", {})
        provenance = Provenance(
            source=str(baseline.path),
            profile=baseline.profile,
            meter=recorded.get("meter", {}),
            versions=recorded.get("versions", {}),
            commit=recorded.get("commit"),
            date=recorded.get("date"),
        )
        snapshot[nodeid] = {baseline.profile.meter: Recorded(record, provenance)}
    return snapshot


def merged_snapshot(baselines: Iterable[BaselineFile | None]) -> dict[str, dict[str, Recorded]]:
    """node id → {meter: Recorded} over several baseline files (one per meter's profile)."""
    merged: dict[str, dict[str, Recorded]] = {}
    for baseline in baselines:
        if baseline is None:
            continue
        for nodeid, meters in baseline_snapshot(baseline).items():
            merged.setdefault(nodeid, {}).update(meters)
    return merged


def results_snapshot(document: Mapping[str, Any], source: str) -> dict[str, dict[str, Recorded]]:
    """node id → {meter: Recorded} of a validated results document."""
    machine = document.get("machine", {})
    descriptions = {
        item.get("name"): item for item in document.get("meters", []) if isinstance(item, Mapping)
    }
    versions = machine.get("versions", {}) if isinstance(machine.get("versions"), Mapping) else {}
    provenances: dict[str, Provenance] = {}
    snapshot: dict[str, dict[str, Recorded]] = {}
    for nodeid, record in document["tests"].items():
        snapshot[nodeid] = {}
        for meter, view in record["meters"].items():
            if meter not in provenances:
                provenances[meter] = Provenance(
                    source=source,
                    profile=profile_from_results(document, meter, view["kind"]),
                    meter=descriptions.get(meter, {}),
                    versions=versions,
                    date=document.get("created"),
                )
            snapshot[nodeid][meter] = Recorded(record, provenances[meter])
    return snapshot


def load_snapshot(path: str | os.PathLike[str]) -> dict[str, dict[str, Recorded]]:
    """A results file (``--energy-json``) or a baseline file, read and validated."""
    document = read_json(path, "results file")
    schema = document.get("schema") if isinstance(document, Mapping) else None
    if schema == BASELINE_SCHEMA:
        profile, tests = validate_baseline(document, str(path))
        return baseline_snapshot(BaselineFile(Path(path), profile, dict(tests)))
    return results_snapshot(validate_results(document, str(path)), str(path))
