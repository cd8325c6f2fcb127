"""The regression gate end to end: save baselines, change the work, see the verdict and exit code.

Each test writes a small lifecycle test whose amount of work is scaled by ``WORK_SCALE`` and
runs pytest on it (pytester), as a user would: ``--energy --energy-save`` first, then again.
"""

import json

import pytest

WORKLOAD = """
import os
import pytest
import torch

MATRIX = torch.ones(48, 48)


def work(units, cpu_clock):
    for _ in range(units):
        MATRIX @ MATRIX
    cpu_clock.spend(units)


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Idle OpenMP workers spin while the machine is busy, and the cputime meter charges their
    # spinning: one intra-op thread keeps its figures about the work.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.lifecycle(usage=[1e3, 1e6], family="demo", method="matmul")
def test_method(energy, cpu_clock):
    scale = float(os.environ.get("WORK_SCALE", "1"))
    with open("body-runs.txt", "a") as runs:
        runs.write("run\\n")
    with energy.train("train"):
        work(round({train} * scale), cpu_clock)
    energy.accuracy = 0.5
    energy.inference(lambda: work(round({infer} * scale), cpu_clock), samples=1)
"""

STEADY_CPU_CLOCK = """
import os
import random
import time

import pytest


class SteadyCpuClock:
    \"\"\"The process CPU clock of a machine with no neighbours: it advances only by the work
    done (0.1 ms a unit) with ±1 % jitter, so the cputime meter sees the workload and a little
    noise, never another process's.\"\"\"

    def __init__(self, steady):
        self.steady = steady
        self.seconds = 0.0
        self.jitter = random.Random(os.environ.get("WORK_SCALE", "1"))

    def process_time(self):
        return self.seconds

    def spend(self, units):
        if self.steady:
            self.seconds += units * 1e-4 * (1 + self.jitter.uniform(-0.01, 0.01))


@pytest.fixture
def cpu_clock(monkeypatch):
    clock = SteadyCpuClock(os.environ.get("STEADY_CPU_CLOCK") == "1")
    if clock.steady:
        monkeypatch.setattr(time, "process_time", clock.process_time)
    return clock
"""

# cputime wants windows long enough to be steady; counted counts exactly, so keep it small.
UNITS = {"cputime": {"train": 20000, "infer": 200}, "counted": {"train": 200, "infer": 50}}
NODEID = "test_workload.py::test_method"


def energy_args(meter, *extra):
    return ["--energy", "--energy-meter", meter, "--energy-rounds", "5", *extra]


@pytest.fixture
def workload(pytester, monkeypatch):
    """A pytester directory with the workload; ``workload(meter)`` writes it for that meter."""

    def write(meter="counted"):
        pytester.makepyfile(test_workload=WORKLOAD.format(**UNITS[meter.split(",")[-1]]))
        pytester.makeconftest(STEADY_CPU_CLOCK)
        return pytester

    monkeypatch.setenv("WORK_SCALE", "1")
    return write


def run(pytester, monkeypatch, scale, *args):
    monkeypatch.setenv("WORK_SCALE", str(scale))
    return pytester.runpytest(*args)


def saved(pytester, name="counted"):
    return json.loads((pytester.path / "baselines" / f"{name}.json").read_text())


# --- the cycle: save, change nothing / more / less, compare -----------------------------------


def test_save_then_an_unchanged_rerun_passes(workload, monkeypatch):
    pytester = workload("cputime,counted")
    first = run(pytester, monkeypatch, 1, *energy_args("cputime,counted", "--energy-save"))
    assert first.ret == 0
    first.stdout.fnmatch_lines(
        [
            "energy: gate counted; baselines in baselines/: cputime-*-*t.json (none yet), "
            "counted.json (none yet)",
            "*new*test_workload.py::test_method [[]counted[]]: no baseline*--energy-save*",
            "baseline saved: baselines/cputime-*t.json (1 tests)",
            "baseline saved: baselines/counted.json (1 tests)",
        ]
    )
    baseline = saved(pytester)
    assert baseline["profile"] == {
        "name": "counted",
        "meter": "counted",
        "kind": "counted",
        "fingerprint": {},
    }
    entry = baseline["tests"][NODEID]
    assert set(entry["meters"]) == {"counted"}
    assert entry["meters"]["counted"]["flops"]["train"] > 0
    assert entry["recorded"]["versions"]["torch"]
    assert entry["recorded"]["date"]
    (cputime_file,) = (pytester.path / "baselines").glob("cputime-*.json")
    cputime = json.loads(cputime_file.read_text())
    assert cputime["profile"]["fingerprint"]["cpu_threads"] >= 1
    assert len(cputime["tests"][NODEID]["meters"]["cputime"]["inference"]["joules_per_sample"]) == 5

    again = run(pytester, monkeypatch, 1, *energy_args("cputime,counted"))
    assert again.ret == 0
    again.stdout.fnmatch_lines(["gate counted: 1 unchanged"])
    again.stdout.no_fnmatch_line("REGRESSED*")


@pytest.fixture
def steady_cpu(monkeypatch):
    """The detection tests judge the gate's rules, not this machine's neighbours: cputime reads
    a CPU clock that only the workload advances (with ±1 % jitter). How often real noise raises
    an alarm is measured by ``python -m benchmarks.false_alarms``."""
    monkeypatch.setenv("STEADY_CPU_CLOCK", "1")


def save_sessions(pytester, monkeypatch, meter, *args):
    """Record a baseline as a user should: three sessions of a noisy meter, one of counted."""
    for _ in range(1 if meter == "counted" else 3):
        assert run(pytester, monkeypatch, 1, *energy_args(meter, "--energy-save"), *args).ret == 0


@pytest.mark.parametrize("meter", ["counted", "cputime"])
def test_20_percent_more_work_is_caught(workload, monkeypatch, steady_cpu, meter):
    pytester = workload(meter)
    save_sessions(pytester, monkeypatch, meter)
    result = run(pytester, monkeypatch, 1.2, *energy_args(meter))
    result.assert_outcomes(passed=1)  # the test itself passed ...
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # ... the energy gate failed the run
    shown = "counted.json" if meter == "counted" else "cputime-*.json"
    result.stdout.fnmatch_lines(
        [
            f"REGRESSED {NODEID} [[]{meter}[]] vs baselines/{shown}",
            "    TEC +*%*(*J → *J, tolerance 5 %*",
            f"gate {meter}: 1 regressed",
            "energy regression in 1 test(s): failing the run",
        ]
    )
    result.stdout.fnmatch_lines(["    IEC +*%*"])
    if meter == "cputime":
        result.stdout.fnmatch_lines(
            ["    3 baseline sessions: could detect TEC ≥ * %, IEC ≥ * %; *pytest-energy check*"]
        )


@pytest.mark.parametrize("meter", ["counted", "cputime"])
def test_2_percent_more_work_is_not_flagged_at_5_percent(workload, monkeypatch, steady_cpu, meter):
    pytester = workload(meter)
    save_sessions(pytester, monkeypatch, meter)
    result = run(pytester, monkeypatch, 1.02, *energy_args(meter))
    assert result.ret == 0, result.stdout.str()
    result.stdout.no_fnmatch_line("REGRESSED*")


def test_an_improvement_says_the_baseline_is_stale_and_can_fail_the_run(workload, monkeypatch):
    pytester = workload("counted")
    run(pytester, monkeypatch, 1, *energy_args("counted", "--energy-save"))
    result = run(pytester, monkeypatch, 0.5, *energy_args("counted"))
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [f"improved  {NODEID} [[]counted[]] vs baselines/counted.json: *stale*--energy-save"]
    )
    strict = run(
        pytester, monkeypatch, 0.5, *energy_args("counted"), "--energy-fail-on-improvement"
    )
    assert strict.ret == pytest.ExitCode.TESTS_FAILED


def test_save_accepts_a_regression_into_the_baseline(workload, monkeypatch):
    pytester = workload("counted")
    run(pytester, monkeypatch, 1, *energy_args("counted", "--energy-save"))
    before = saved(pytester)["tests"][NODEID]["meters"]["counted"]["tec_joules"]
    accepted = run(pytester, monkeypatch, 1.2, *energy_args("counted", "--energy-save"))
    assert accepted.ret == 0
    accepted.stdout.fnmatch_lines(["REGRESSED*", "*accepted into the baselines (--energy-save)"])
    after = saved(pytester)["tests"][NODEID]["meters"]["counted"]["tec_joules"]
    assert after == pytest.approx(1.2 * before, rel=0.01)
    assert run(pytester, monkeypatch, 1.2, *energy_args("counted")).ret == 0


def test_a_failed_test_writes_nothing_and_keeps_its_old_entry(workload, monkeypatch):
    pytester = workload("counted")
    run(pytester, monkeypatch, 1, *energy_args("counted", "--energy-save"))
    before = saved(pytester)["tests"][NODEID]
    pytester.makepyfile(
        test_broken="""
        def test_broken(energy):
            with energy.train("train"):
                pass
            assert False
        """
    )
    monkeypatch.setenv("WORK_SCALE", "not a number")  # test_method fails too
    result = pytester.runpytest(*energy_args("counted", "--energy-save"))
    result.assert_outcomes(failed=2)
    tests = saved(pytester)["tests"]
    assert tests == {NODEID: before}


def test_prune_drops_entries_of_removed_tests(workload, monkeypatch):
    pytester = workload("counted")
    pytester.makepyfile(test_other="def test_other(energy):\n    energy.inference(lambda: 1)\n")
    run(pytester, monkeypatch, 1, *energy_args("counted", "--energy-save"))
    assert set(saved(pytester)["tests"]) == {NODEID, "test_other.py::test_other"}
    (pytester.path / "test_other.py").unlink()
    run(pytester, monkeypatch, 1, *energy_args("counted", "--energy-save"))
    assert "test_other.py::test_other" in saved(pytester)["tests"]  # merged, never dropped
    result = run(
        pytester, monkeypatch, 1, *energy_args("counted", "--energy-save", "--energy-prune")
    )
    result.stdout.fnmatch_lines(["baseline saved: baselines/counted.json (1 tests, 1 pruned)"])
    assert set(saved(pytester)["tests"]) == {NODEID}


def test_baseline_tests_left_out_with_k_are_said_to_be_deselected(workload, monkeypatch):
    pytester = workload("counted")
    pytester.makepyfile(test_other="def test_other(energy):\n    energy.inference(lambda: 1)\n")
    run(pytester, monkeypatch, 1, *energy_args("counted", "--energy-save"))
    result = run(pytester, monkeypatch, 1, *energy_args("counted", "-k", "test_method"))
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["deselected 1 test(s) of the baseline were not collected in this run*test_other*"]
    )
    result.stdout.no_fnmatch_line("*did not pass in this run*")


def test_results_json_carries_profiles_and_the_comparison(workload, monkeypatch):
    pytester = workload("counted")
    run(pytester, monkeypatch, 1, *energy_args("counted", "--energy-save"))
    run(pytester, monkeypatch, 1.2, *energy_args("counted", "--energy-json", "results.json"))
    document = json.loads((pytester.path / "results.json").read_text())
    assert document["profiles"]["counted"]["name"] == "counted"
    comparison = document["comparison"]
    assert comparison["counts"]["regressed"] == 1
    assert comparison["tests"][0]["meters"][0]["baseline_source"] == "baselines/counted.json"


def test_train_rounds_repeat_the_body_and_record_training_noise(workload, monkeypatch):
    pytester = workload("counted")
    result = run(pytester, monkeypatch, 1, *energy_args("counted", "--energy-train-rounds", "3"))
    result.assert_outcomes(passed=1)
    run(
        pytester,
        monkeypatch,
        1,
        *energy_args("counted", "--energy-train-rounds", "3", "--energy-save"),
    )
    assert (pytester.path / "body-runs.txt").read_text().count("run") == 6
    view = saved(pytester)["tests"][NODEID]["meters"]["counted"]
    repeats = view["train_repeats"]["tec_joules"]
    assert len(repeats) == 3
    assert repeats[0] == view["tec_joules"]
    assert len(set(repeats)) == 1  # counted: the same work counts the same


def test_ini_values_choose_the_directory_and_the_gate(workload, monkeypatch):
    pytester = workload("cputime,counted")
    pytester.makeini("[pytest]\nenergy_baselines = ref/energy\nenergy_gate = cputime\n")
    result = run(pytester, monkeypatch, 1, *energy_args("cputime,counted", "--energy-save"))
    result.stdout.fnmatch_lines(["energy: gate cputime; baselines in ref/energy/: *"])
    assert (pytester.path / "ref" / "energy" / "counted.json").exists()


# --- bad input: one clear line, nothing overwritten, no traceback -----------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"schema": "pytest-energy/baseline", "version": 1, "tests": {', "not valid JSON"),
        ('{"schema": "pytest-energy/baseline", "version": 1, "tests": []}', "expected an object"),
        ('{"schema": "pytest-energy/baseline", "version": 2}', "written by a newer pytest-energy"),
    ],
)
@pytest.mark.parametrize("save", [False, True])
def test_a_corrupt_baseline_stops_the_run_and_is_left_untouched(workload, content, message, save):
    pytester = workload("counted")
    path = pytester.path / "baselines" / "counted.json"
    path.parent.mkdir()
    path.write_text(content)
    result = pytester.runpytest(*energy_args("counted", *(["--energy-save"] if save else [])))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*baselines/counted.json: *{message}*fix it or delete it*"])
    assert "Traceback" not in result.stderr.str()
    assert path.read_text() == content


def test_a_baseline_of_another_profile_stops_the_run(workload, monkeypatch):
    pytester = workload("cputime")
    run(pytester, monkeypatch, 1, *energy_args("cputime", "--energy-save"))
    (path,) = (pytester.path / "baselines").glob("cputime-*.json")
    document = json.loads(path.read_text())
    document["profile"]["fingerprint"]["cpu_model"] = "Some Other CPU"
    path.write_text(json.dumps(document))
    result = pytester.runpytest(*energy_args("cputime"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*a baseline of another profile: recorded for cputime on Some*"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--energy-tolerance", "five percent"], "*--energy-tolerance: expected a fraction*"),
        (["--energy-alpha", "2"], "*--energy-alpha: expected a probability between 0 and 1*"),
        (["--energy-gate", "nvml"], "*--energy-gate: nvml not in use in this run*"),
        (["--energy-train-rounds", "0"], "*--energy-train-rounds: expected a whole number*"),
        (["--energy-prune"], "*--energy-prune works with --energy-save*"),
        (["--energy-save", "--energy-baselines", "blocker/dir"], "*blocker is not a directory*"),
    ],
)
def test_bad_gate_options_are_usage_errors(workload, args, message):
    pytester = workload("counted")
    (pytester.path / "blocker").write_text("a file in the way")
    result = pytester.runpytest(*energy_args("counted", *args))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_save_without_energy_is_a_usage_error(workload):
    result = workload("counted").runpytest("--energy-save")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--energy-save needs --energy*"])


def test_an_interrupted_run_saves_nothing(workload, monkeypatch):
    pytester = workload("counted")
    run(pytester, monkeypatch, 1, *energy_args("counted", "--energy-save"))
    before = (pytester.path / "baselines" / "counted.json").read_text()
    pytester.makepyfile(test_zz_interrupt="def test_interrupt():\n    raise KeyboardInterrupt\n")
    monkeypatch.setenv("WORK_SCALE", "1.2")
    result = pytester.runpytest_inprocess(
        *energy_args("counted", "--energy-save"), no_reraise_ctrlc=True
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*--energy-save: the run was interrupted; nothing was saved*"])
    assert (pytester.path / "baselines" / "counted.json").read_text() == before


# --- pytest-xdist: workers measure, the controller compares and saves once ---------------------

TWO_TESTS = """
import torch

def test_small(energy):
    x = torch.ones(16, 16)
    with energy.train("train"):
        x @ x
    energy.inference(lambda: x @ x, samples=16)

def test_large(energy):
    x = torch.ones(32, 32)
    with energy.train("train"):
        x @ x @ x
    energy.inference(lambda: x @ x, samples=32)
"""


def _figures(view):
    """The deterministic part of a counted view: energy, FLOPs and bytes (not wall seconds)."""
    return {
        "tec_joules": view["tec_joules"],
        "iec_joules_per_sample": view["iec_joules_per_sample"],
        "flops": view["flops"],
        "bytes_moved": view["bytes_moved"],
        "full_cycle": view["full_cycle"],
        "phases": [(p["name"], p["joules"], p["flops"]) for p in view["phases"]],
    }


def test_xdist_workers_produce_the_baseline_a_serial_run_does(pytester):
    pytester.makepyfile(test_two=TWO_TESTS)
    meters = ["--energy", "--energy-meter", "cputime,counted", "--energy-rounds", "3"]
    serial = pytester.runpytest(*meters, "--energy-save")
    serial.assert_outcomes(passed=2)
    directory = pytester.path / "baselines"
    (cputime_file,) = directory.glob("cputime-*.json")
    serial_counted = json.loads((directory / "counted.json").read_text())["tests"]
    serial_cputime = json.loads(cputime_file.read_text())["tests"]

    # Two workers run the tests; the controller compares with the serial baseline, once, and
    # saves over it, once.
    parallel = pytester.runpytest_subprocess(*meters, "-n", "2", "--energy-save")
    parallel.assert_outcomes(passed=2)
    assert parallel.ret == 0
    parallel.stdout.fnmatch_lines(["gate counted: 2 unchanged"])
    assert parallel.stdout.str().count("baseline saved: baselines/counted.json (2 tests)") == 1
    parallel_counted = json.loads((directory / "counted.json").read_text())["tests"]
    parallel_cputime = json.loads(cputime_file.read_text())["tests"]

    assert (
        set(parallel_counted)
        == set(serial_counted)
        == {
            "test_two.py::test_small",
            "test_two.py::test_large",
        }
    )
    for nodeid, entry in serial_counted.items():
        assert _figures(parallel_counted[nodeid]["meters"]["counted"]) == _figures(
            entry["meters"]["counted"]
        )
    assert set(parallel_cputime) == set(serial_cputime)
    for nodeid, entry in serial_cputime.items():
        assert set(parallel_cputime[nodeid]["meters"]["cputime"]) == set(entry["meters"]["cputime"])


def test_sessions_accumulate_up_to_keep_and_too_few_are_flagged(workload, monkeypatch):
    pytester = workload("cputime")
    first = run(pytester, monkeypatch, 1, *energy_args("cputime", "--energy-save"))
    assert first.ret == 0
    again = run(pytester, monkeypatch, 1, *energy_args("cputime"))
    again.stdout.fnmatch_lines(
        [
            "energy: warning: cputime gates, but baselines/cputime-*.json holds only 1 "
            "session(s) of some tests: *no change can be significant*",
            "unchanged test_workload.py::test_method [[]cputime[]] vs baselines/cputime-*.json",
            "    1 baseline sessions: too few to judge the noise between sessions",
        ]
    )
    for _ in range(3):
        run(
            pytester,
            monkeypatch,
            1,
            *energy_args("cputime", "--energy-save", "--energy-keep-sessions", "3"),
        )
    (path,) = (pytester.path / "baselines").glob("cputime-*.json")
    sessions = json.loads(path.read_text())["tests"][NODEID]["sessions"]
    assert len(sessions) == 3
    provenance = sessions[-1]["provenance"]
    assert {"commit", "branch", "time", "dirty", "versions", "machine"} <= set(provenance)
    assert provenance["versions"]["torch"]


@pytest.mark.parametrize("flag", ["--energy-json", "--energy-markdown"])
def test_an_output_pointed_at_a_baseline_is_refused_before_the_run(workload, monkeypatch, flag):
    pytester = workload("counted")
    assert run(pytester, monkeypatch, 1, *energy_args("counted", "--energy-save")).ret == 0
    path = pytester.path / "baselines" / "counted.json"
    before = path.read_bytes()
    result = run(pytester, monkeypatch, 1, *energy_args("counted", flag, str(path)))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{flag} *counted.json*an input of this run*another path*"])
    assert path.read_bytes() == before
