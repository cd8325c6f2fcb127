"""Baseline files: profile names, strict loading, locked atomic merge-saves, and bad input."""

import contextlib
import json
import multiprocessing
import os
from pathlib import Path

import pytest
from gate_data import H100, record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_energy.config import Tolerance, parse_tolerance
from pytest_energy.errors import BaselineError, ConfigError
from pytest_energy.gate import store as baselines
from pytest_energy.gate.profiles import gpu_fingerprint, make_profile, profile_name
from pytest_energy.gate.sessions import entry_sessions
from pytest_energy.gate.store import (
    BASELINE_SCHEMA,
    baseline_document,
    baseline_entry,
    load_baseline,
    load_snapshot,
    save_baseline,
    validate_baseline,
)

CPU = {"cpu_model": "AMD EPYC", "cpu_threads": 2}
CPUTIME = make_profile("cputime", "estimated", CPU)
COUNTED = make_profile("counted", "counted", {})
PROVENANCE = {"commit": "abc123", "date": "2026-11-26T00:00:00+00:00", "versions": {"torch": "2"}}


def entry(tec=100.0, meter="counted"):
    return baseline_entry(record(meter, tec=tec), meter, PROVENANCE, {"name": meter})


def write_baseline(directory, profile, **tests):
    path = Path(directory) / f"{profile.name}.json"
    document = baseline_document(profile, {f"t.py::{name}": value for name, value in tests.items()})
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


# --- profiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "meter, kind, fingerprint, name",
    [
        ("counted", "counted", {}, "counted"),
        ("cputime", "estimated", CPU, "cputime-amd-epyc-2t"),
        (
            "rapl",
            "measured",
            {"cpu_model": "Intel(R) Xeon(R) CPU @ 2.20GHz", "cpu_threads": 4},
            "rapl-intel-xeon-2-20ghz-4t",
        ),
        (
            "cputime",
            "estimated",
            {"cpu_model": "AMD EPYC 7B13 64-Core Processor", "cpu_threads": 2},
            "cputime-amd-epyc-7b13-2t",
        ),
        ("nvml", "measured", H100, "nvml-nvidia-h100-80gb-hbm3-drv550-700w"),
        (
            "nvml",
            "measured",
            {
                "gpus": [{"name": "NVIDIA A100", "power_limit_watts": 400}] * 2,
                "driver_major": "535",
            },
            "nvml-2x-nvidia-a100-drv535-400w",
        ),
    ],
)
def test_profile_names_are_readable(meter, kind, fingerprint, name):
    assert profile_name(meter, kind, fingerprint) == name


@given(st.text(max_size=200), st.integers(min_value=1, max_value=1024))
def test_profile_names_are_filesystem_safe_and_bounded(cpu_model, threads):
    name = profile_name("cputime", "estimated", {"cpu_model": cpu_model, "cpu_threads": threads})
    assert name and len(name) <= 48
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


def test_long_names_that_would_collide_stay_distinct():
    first = profile_name("cputime", "estimated", {"cpu_model": "X" * 80 + " one", "cpu_threads": 2})
    second = profile_name(
        "cputime", "estimated", {"cpu_model": "X" * 80 + " two", "cpu_threads": 2}
    )
    assert first != second


class FakeNvml:
    """The pynvml calls a GPU fingerprint makes: driver version and power limit per GPU."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        self.initialised = 0

    def nvmlInit(self):
        self.initialised += 1

    def nvmlShutdown(self):
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        return 700_000 if handle == 0 else self._fail()

    def _fail(self):
        raise self.NVMLError("not supported")


class FakeGpuMeter:
    name, kind = "nvml", "measured"

    def describe(self):
        return {
            "name": "nvml",
            "gpus": {
                "gpu:0": {"name": "NVIDIA H100 80GB HBM3", "nvml_index": 0},
                "gpu:1": {"name": "NVIDIA H100 80GB HBM3", "nvml_index": 3},
            },
        }


def test_gpu_fingerprint_has_names_driver_major_and_power_limits_nvml_gives():
    nvml = FakeNvml()
    fingerprint = gpu_fingerprint(FakeGpuMeter(), nvml)
    assert fingerprint == {
        "gpus": [
            {"name": "NVIDIA H100 80GB HBM3", "power_limit_watts": 700},
            {"name": "NVIDIA H100 80GB HBM3"},  # NVML would not say: left out, not guessed
        ],
        "driver_major": "550",
    }
    assert nvml.initialised == 0


# --- loading: every bad file is one clear error naming it, and stays untouched ----------------


def test_missing_file_is_no_baseline(tmp_path):
    assert load_baseline(tmp_path / "counted.json", COUNTED) is None


def test_a_saved_file_loads_back(tmp_path):
    path = write_baseline(tmp_path, COUNTED, test_a=entry(100.0))
    loaded = load_baseline(path, COUNTED)
    assert loaded.profile == COUNTED
    assert loaded.tests["t.py::test_a"]["meters"]["counted"]["tec_joules"] == 100.0
    snapshot = load_snapshot(path)
    provenance = snapshot["t.py::test_a"]["counted"].provenance
    assert provenance.source == str(path)
    assert provenance.versions == {"torch": "2"}
    assert provenance.commit == "abc123"


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"schema": "pytest-energy/baseline", "version": 1, "tests": {"t', "truncated?"),
        ("not json at all", "not valid JSON"),
        ("[1, 2, 3]", "the document: expected an object"),
        ('{"schema": "pytest-energy/baseline", "version": 99}', "newer pytest-energy"),
        ('{"schema": "pytest-energy/baseline", "version": 0}', "unknown schema version 0"),
        ('{"schema": "pytest-energy/baseline", "version": "1"}', "version: expected a whole"),
        ('{"schema": "pytest-energy/baseline", "version": 1, "profile": {}}', "profile: expected"),
        ('{"version": 1, "tests": {}}', "schema: expected 'pytest-energy/baseline'"),
        ('{"a": NaN}', "NaN is not a number JSON allows"),
        (b"\xff\xfe binary", "cannot read"),
    ],
)
def test_corrupt_files_are_named_and_left_untouched(tmp_path, content, message):
    path = tmp_path / "counted.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = path.read_bytes()
    with pytest.raises(BaselineError) as error:
        load_baseline(path, COUNTED)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)
    assert "fix it or delete it" in str(error.value)
    assert path.read_bytes() == before


def test_wrong_shape_deep_inside_names_the_bad_value(tmp_path):
    bad = entry()
    bad["meters"]["counted"]["tec_joules"] = "a lot"
    path = write_baseline(tmp_path, COUNTED, test_a=bad)
    with pytest.raises(BaselineError, match=r"tests\['t.py::test_a'\]\.meters\['counted'\]"):
        load_baseline(path, COUNTED)


def test_a_baseline_of_another_profile_is_refused(tmp_path):
    other = make_profile("cputime", "estimated", {"cpu_model": "Intel Xeon", "cpu_threads": 8})
    path = tmp_path / f"{CPUTIME.name}.json"
    document = baseline_document(other, {"t.py::test_a": entry(meter="cputime")})
    path.write_text(json.dumps(document))
    with pytest.raises(BaselineError, match="a baseline of another profile: recorded for cputime "):
        load_baseline(path, CPUTIME)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_any_json_is_either_a_baseline_or_a_baseline_error(value):
    try:
        validate_baseline(value, "fuzz.json")
    except BaselineError as error:
        assert str(error).startswith("fuzz.json")


@given(st.dictionaries(st.sampled_from(["schema", "version", "profile", "tests"]), json_values))
def test_documents_with_the_right_keys_but_any_values_never_crash_the_loader(document):
    document.setdefault("schema", BASELINE_SCHEMA)
    with contextlib.suppress(BaselineError):
        validate_baseline(document, "fuzz.json")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(st.binary(max_size=64))
def test_any_bytes_on_disk_load_or_fail_cleanly(tmp_path, content):
    path = tmp_path / "counted.json"
    path.write_bytes(content)
    with contextlib.suppress(BaselineError):
        load_baseline(path, COUNTED)


# --- the tolerance parser (used by --energy-tolerance, the ini value and the marker) ----------


@given(st.floats(min_value=0, max_value=1000, allow_nan=False))
def test_a_percentage_and_its_fraction_parse_alike(percent):
    from_percent = parse_tolerance(f"{percent!r}%")
    assert from_percent.train == pytest.approx(percent / 100)
    assert parse_tolerance(percent / 100) == Tolerance(percent / 100, percent / 100, percent / 100)


@given(st.text(max_size=12) | json_values)
def test_the_tolerance_parser_accepts_or_names_the_setting(value):
    try:
        tolerance = parse_tolerance(value, "--energy-tolerance")
    except ConfigError as error:
        assert str(error).startswith("--energy-tolerance")
    else:
        assert all(fraction >= 0 for fraction in tolerance.as_dict().values())


# --- saving -----------------------------------------------------------------------------------


def test_save_merges_with_the_entries_already_there(tmp_path):
    save_baseline(tmp_path, COUNTED, {"t.py::test_a": entry(100.0), "t.py::test_b": entry(5.0)})
    result = save_baseline(tmp_path, COUNTED, {"t.py::test_a": entry(120.0)})
    assert result.written == ("t.py::test_a",) and result.pruned == ()
    tests = load_baseline(result.path, COUNTED).tests
    assert tests["t.py::test_a"]["meters"]["counted"]["tec_joules"] == 120.0
    assert tests["t.py::test_b"]["meters"]["counted"]["tec_joules"] == 5.0


def test_prune_drops_entries_of_tests_that_no_longer_exist(tmp_path):
    save_baseline(tmp_path, COUNTED, {"t.py::test_a": entry(), "t.py::test_gone": entry()})
    result = save_baseline(
        tmp_path, COUNTED, {"t.py::test_a": entry()}, keep_only={"t.py::test_a", "t.py::test_b"}
    )
    assert result.pruned == ("t.py::test_gone",)
    assert set(load_baseline(result.path, COUNTED).tests) == {"t.py::test_a"}


def test_saved_files_are_stable_sorted_and_indented(tmp_path):
    path = save_baseline(tmp_path, COUNTED, {"t.py::b": entry(), "t.py::a": entry()}).path
    first = path.read_text()
    save_baseline(tmp_path, COUNTED, {"t.py::a": entry()})
    assert path.read_text() == first
    assert first.endswith("}\n")
    assert first.index('"t.py::a"') < first.index('"t.py::b"')
    assert '\n  "profile": {' in first
    assert ".*.lock\n" in (tmp_path / ".gitignore").read_text()
    assert ".pytest-energy-*.tmp\n" in (tmp_path / ".gitignore").read_text()


def test_save_refuses_to_overwrite_a_corrupt_file(tmp_path):
    path = tmp_path / "counted.json"
    path.write_text('{"schema": "pytest-energy/baseline", "tests": {"t.py::')
    with pytest.raises(BaselineError, match=r"--energy-save refused: .*counted.json.*truncated"):
        save_baseline(tmp_path, COUNTED, {"t.py::test_a": entry()})
    assert path.read_text() == '{"schema": "pytest-energy/baseline", "tests": {"t.py::'


def test_an_interrupted_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = save_baseline(tmp_path, COUNTED, {"t.py::test_a": entry(100.0)}).path
    before = path.read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_baseline(tmp_path, COUNTED, {"t.py::test_a": entry(999.0)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "counted.json"
    ]
    assert not [
        p
        for p in tmp_path.iterdir()
        if p.name.startswith(".counted.json.") and "lock" not in p.name
    ]


def test_a_directory_that_cannot_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with pytest.raises(BaselineError, match=r"--energy-save: cannot write .*a-file"):
        save_baseline(blocker / "baselines", COUNTED, {"t.py::test_a": entry()})
    with pytest.raises(BaselineError, match="is not a directory"):
        baselines.check_writable(blocker / "baselines")


def _save_many(directory, worker):
    for index in range(5):
        save_baseline(directory, COUNTED, {f"t.py::test_{worker}_{index}": entry(float(index))})


def test_concurrent_saves_into_one_directory_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_many, args=(tmp_path, w)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    tests = load_baseline(tmp_path / "counted.json", COUNTED).tests
    assert len(tests) == 20


def test_saved_files_are_readable_like_any_committed_file(tmp_path):
    path = save_baseline(tmp_path, COUNTED, {"t.py::test_a": entry()}).path
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o664)
    save_baseline(tmp_path, COUNTED, {"t.py::test_a": entry(1.0)})
    assert path.stat().st_mode & 0o777 == 0o664


# --- session histories of noisy meters --------------------------------------------------------


def _append_sessions(directory, worker):
    for index in range(4):
        tec = 100.0 + 10 * worker + index
        save_baseline(directory, CPUTIME, {"t.py::test_a": entry(tec, "cputime")}, keep_sessions=8)


def test_concurrent_saves_append_every_session_and_trim_to_keep(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_sessions, args=(tmp_path, w)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    tests = load_baseline(tmp_path / f"{CPUTIME.name}.json", CPUTIME).tests
    sessions = entry_sessions(tests["t.py::test_a"])
    assert len(sessions) == 8  # 12 saved, the oldest 4 trimmed
    saved_tecs = {100.0 + 10 * worker + index for worker in range(3) for index in range(4)}
    assert {session["tec_joules"] for session in sessions} <= saved_tecs
    for worker in range(3):  # each worker's own sessions stay in the order it saved them
        own = [
            s["tec_joules"]
            for s in sessions
            if 100 + 10 * worker <= s["tec_joules"] < 110 + 10 * worker
        ]
        assert own == sorted(own)


def test_an_old_single_session_baseline_loads_and_becomes_the_first_session(tmp_path):
    old = entry(80.0, "cputime")
    del old["sessions"]  # written before sessions existed
    path = write_baseline(tmp_path, CPUTIME, test_a=old)
    (only,) = entry_sessions(load_baseline(path, CPUTIME).tests["t.py::test_a"], "cputime")
    assert only["tec_joules"] == 80.0
    assert only["provenance"]["commit"] == "abc123"
    assert only["provenance"]["time"] == PROVENANCE["date"]
    save_baseline(tmp_path, CPUTIME, {"t.py::test_a": entry(90.0, "cputime")})
    sessions = entry_sessions(load_baseline(path, CPUTIME).tests["t.py::test_a"])
    assert [session["tec_joules"] for session in sessions] == [80.0, 90.0]


def test_sessions_of_another_torch_start_a_new_history(tmp_path):
    save_baseline(tmp_path, CPUTIME, {"t.py::test_a": entry(80.0, "cputime")})
    newer = baseline_entry(
        record("cputime", tec=90.0), "cputime", {**PROVENANCE, "versions": {"torch": "3"}}, {}
    )
    save_baseline(tmp_path, CPUTIME, {"t.py::test_a": newer})
    tests = load_baseline(tmp_path / f"{CPUTIME.name}.json", CPUTIME).tests
    assert [s["tec_joules"] for s in entry_sessions(tests["t.py::test_a"])] == [90.0]


def test_counted_entries_keep_no_sessions(tmp_path):
    assert "sessions" not in entry()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("tec_joules", "lots", "sessions[1].tec_joules: expected a number"),
        ("tec_joules", -5.0, "sessions[1].tec_joules: expected energy ≥ 0 J"),
        ("iec_joules_per_sample", -1e-6, "sessions[1].iec_joules_per_sample: expected energy ≥ 0"),
        ("inference_joules_per_sample", [1.0, None], "inference_joules_per_sample[1]"),
    ],
)
def test_a_history_with_one_corrupt_session_is_named_and_left_untouched(
    tmp_path, field, value, message
):
    good = entry(100.0, "cputime")
    good["sessions"] = good["sessions"] * 3
    good["sessions"][1] = {**good["sessions"][1], field: value}
    path = write_baseline(tmp_path, CPUTIME, test_a=good)
    before = path.read_bytes()
    with pytest.raises(BaselineError) as error:
        load_baseline(path, CPUTIME)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)
    with pytest.raises(BaselineError):
        save_baseline(tmp_path, CPUTIME, {"t.py::test_a": entry(1.0, "cputime")})
    assert path.read_bytes() == before


@pytest.mark.parametrize("field", ["tec_joules", "iec_joules_per_sample"])
def test_negative_energy_in_a_baseline_is_refused_with_the_file_named(tmp_path, field):
    bad = entry()
    bad["meters"]["counted"][field] = -5.0
    path = write_baseline(tmp_path, COUNTED, test_a=bad)
    with pytest.raises(BaselineError) as error:
        load_baseline(path, COUNTED)
    assert str(error.value).startswith(str(path))
    assert f"meters['counted'].{field}: expected energy ≥ 0 J" in str(error.value)


def test_cpu_profiles_tell_two_epycs_of_one_name_apart(tmp_path):
    from pytest_energy.gate.profiles import _cpuinfo, hardware_difference

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
        "model name\t: AMD EPYC\nstepping\t: 1\n\nprocessor\t: 1\ncpu family\t: 99\n"
    )
    found = _cpuinfo(str(cpuinfo))
    assert found == {
        "cpu_vendor": "AuthenticAMD",
        "cpu_family": "25",
        "cpu_model_number": "1",
        "cpu_stepping": "1",
    }
    zen3 = {**CPU, **found, "cpu_isa": "AVX2"}
    other = {**CPU, **found, "cpu_model_number": "17", "cpu_isa": "AVX512"}
    assert make_profile("cputime", "estimated", zen3).name == "cputime-amd-epyc-f25m1-avx2-2t"
    assert make_profile("cputime", "estimated", other).name == "cputime-amd-epyc-f25m17-avx512-2t"
    assert "family 25 model 17 stepping 1, torch kernels AVX512" in hardware_difference(other, zen3)
