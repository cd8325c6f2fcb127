"""The plugin end to end, through pytester: what a user sees with and without --energy."""

import json

import pytest

LIFECYCLE_TEST = """
import pytest

@pytest.fixture(scope="session")
def base_model(energy_session):
    with energy_session.measure("base-training") as training:
        sum(i * i for i in range(200_000))
    return training

@pytest.mark.lifecycle(usage=[1e3, 1e6], family="pruning", method="fpgm", model="tiny")
def test_fpgm(energy, base_model):
    calls = []
    energy.charge(base_model)
    with energy.train("finetune"):
        sum(i * i for i in range(100_000))
    energy.accuracy = 0.75
    energy.inference(lambda: calls.append(sum(range(2_000))), samples=8)
    if not energy.enabled:
        assert len(calls) == 1
"""

CPUTIME = ["--energy", "--energy-meter", "cputime", "--energy-rounds", "3"]


@pytest.fixture
def lifecycle_test(pytester):
    pytester.makepyfile(test_method=LIFECYCLE_TEST)
    return pytester


def test_without_energy_the_code_runs_once_and_nothing_is_measured(lifecycle_test):
    result = lifecycle_test.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("energy: meters*")
    result.stdout.no_fnmatch_line("*= energy =*")
    result.stdout.no_fnmatch_line("*TEC*")


def test_with_energy_the_summary_shows_the_full_cycle_table(lifecycle_test):
    result = lifecycle_test.runpytest(*CPUTIME)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "energy: meters cputime (estimated)",
            "*= energy =*",
            "meter cputime: estimated*",
            "family: pruning",
            "method*model*accuracy*meter (kind)*TEC*IEC / sample*E(MUI=1000)*E(MUI=1e6)*",
            "fpgm*tiny*75.0 %*cputime (estimated)*J*J*J*J*",
        ]
    )


def test_results_json_records_phases_rounds_and_full_cycle_energy(lifecycle_test):
    result = lifecycle_test.runpytest(*CPUTIME, "--energy-json", "out/results.json")
    result.assert_outcomes(passed=1)
    document = json.loads((lifecycle_test.path / "out/results.json").read_text())
    assert document["schema"] == "pytest-energy/results"
    assert document["version"] == 1
    assert document["meters"][0]["name"] == "cputime"
    test = document["tests"]["test_method.py::test_fpgm"]
    assert test["labels"] == {"family": "pruning", "method": "fpgm", "model": "tiny"}
    assert test["accuracy"] == 0.75
    cputime = test["meters"]["cputime"]
    assert cputime["kind"] == "estimated"
    assert [(p["name"], p["charged"]) for p in cputime["phases"]] == [
        ("base-training", True),
        ("finetune", False),
    ]
    assert all(phase["joules"] > 0 for phase in cputime["phases"])
    assert cputime["tec_joules"] == pytest.approx(sum(p["joules"] for p in cputime["phases"]))
    assert len(cputime["inference"]["joules_per_sample"]) == 3
    iec = cputime["iec_joules_per_sample"]
    assert iec > 0
    assert [entry["usage"] for entry in cputime["full_cycle"]] == [1e3, 1e6]
    for entry in cputime["full_cycle"]:
        assert entry["joules"] == pytest.approx(cputime["tec_joules"] + entry["usage"] * iec)
        assert entry["greenness"] == pytest.approx(0.75 / entry["joules"])


def test_each_inference_round_is_long_enough_for_the_meter(lifecycle_test):
    lifecycle_test.runpytest(*CPUTIME, "--energy-json", "r.json").assert_outcomes(passed=1)
    inference = json.loads((lifecycle_test.path / "r.json").read_text())["tests"][
        "test_method.py::test_fpgm"
    ]["meters"]["cputime"]["inference"]
    assert inference["calls_per_round"] > 1
    assert len(inference["seconds"]) == 3
    assert inference["warmup_seconds"] > 0
    assert isinstance(inference["settled"], bool)
    assert "torch_threads" in inference


def _fake_clock(monkeypatch, durations):
    """A clock that advances only by the durations of the calls: no real timing can flake."""
    from pytest_energy import fixture

    now = [0.0]
    steps = iter(durations)

    def call() -> None:
        now[0] += next(steps)

    monkeypatch.setattr(fixture.time, "perf_counter", lambda: now[0])
    return call


def test_a_round_lasts_the_meters_window_and_starts_once_the_time_per_call_settles(monkeypatch):
    """The first call is 40 ms slow, the rest take 1 ms: the slow call neither sizes the rounds
    nor ends the warm-up; batches grow to span the 5 ms window, and two agreeing batches end it."""
    from pytest_energy.fixture import settle_rounds

    call = _fake_clock(monkeypatch, [0.040, *[0.001] * 1000])
    settling = settle_rounds(call, 0.005)
    assert settling.settled
    assert settling.calls_per_round * 0.001 >= 0.005
    assert settling.warmup_seconds < 0.1


def test_a_warm_up_that_never_settles_gives_up_and_says_so(monkeypatch):
    """Each call 6 % slower than the last: no two batches agree, so warm-up stops at its time
    budget and the rounds start unsettled, which the record states."""
    from pytest_energy.fixture import SETTLE_MAX_SECONDS, settle_rounds

    call = _fake_clock(monkeypatch, [0.001 * 1.06**index for index in range(1000)])
    settling = settle_rounds(call, 0.005)
    assert not settling.settled
    assert SETTLE_MAX_SECONDS <= settling.warmup_seconds < 2 * SETTLE_MAX_SECONDS


def test_a_failed_test_is_left_out_of_the_results(pytester):
    pytester.makepyfile(
        """
        def test_breaks(energy):
            with energy.train("train"):
                sum(range(1000))
            assert False, "the method broke"
        """
    )
    result = pytester.runpytest(*CPUTIME, "--energy-json", "r.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*not in the results: test_*::test_breaks (failed)*"])
    assert json.loads((pytester.path / "r.json").read_text())["tests"] == {}


def test_ini_file_sets_the_default_usage(pytester):
    pytester.makeini("[pytest]\nenergy_usage = 10 100\n")
    pytester.makepyfile(
        """
        def test_plain(energy):
            energy.inference(lambda: sum(range(100)), samples=1)
        """
    )
    result = pytester.runpytest(*CPUTIME)
    result.stdout.fnmatch_lines(["*E(MUI=10)*E(MUI=100)*"])


# --- bad input: one clear line, never a traceback from inside the plugin ----------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--energy-meter", "joulemeter"], "*unknown meter 'joulemeter'*"),
        (["--energy-usage", "lots"], "*--energy-usage: 'lots' is not a number*"),
        (["--energy-tolerance", "five"], "*--energy-tolerance: expected a fraction*"),
        (["--energy-rounds", "0"], "*--energy-rounds: expected a whole number*"),
        (["--energy-cpu-watts", "-1"], "*--energy-cpu-watts: expected watts per hardware thread*"),
    ],
)
def test_bad_command_line_values_are_usage_errors(lifecycle_test, args, message):
    result = lifecycle_test.runpytest("--energy", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_a_meter_that_does_not_work_here_says_why(lifecycle_test, tmp_path):
    result = lifecycle_test.runpytest(
        "--energy", "--energy-meter", "rapl", "--energy-rapl-root", str(tmp_path / "nowhere")
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--energy-meter: rapl: *absent*pytest-energy meters*"])


def test_a_bad_marker_value_fails_that_test_with_one_line(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.lifecycle(usage="plenty")
        def test_bad(energy):
            pass
        """
    )
    result = pytester.runpytest(*CPUTIME)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_bad: lifecycle(usage=...): 'plenty' is not a number*"])
    result.stdout.no_fnmatch_line("*plugin.py*")


def test_a_train_window_inside_another_is_refused(pytester):
    pytester.makepyfile(
        """
        def test_nested(energy):
            with energy.train("prune"):
                with energy.train("finetune"):
                    pass
        """
    )
    result = pytester.runpytest(*CPUTIME)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*energy.train('finetune') was opened inside energy.train('prune')*cannot nest*"]
    )
    result.stdout.no_fnmatch_line("*session.py*")


def test_an_exception_in_the_inference_function_names_where_it_came_from(pytester):
    pytester.makepyfile(
        """
        def broken_model():
            raise RuntimeError("shape mismatch in layer 3")

        def test_inference(energy):
            energy.inference(broken_model, samples=4)
        """
    )
    result = pytester.runpytest(*CPUTIME)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*RuntimeError: shape mismatch in layer 3", "*raised inside energy.inference(fn)*"]
    )
    result.stdout.no_fnmatch_line("*fixture.py*")


def test_accuracy_given_as_a_percentage_gets_a_hint(pytester):
    pytester.makepyfile(
        """
        def test_accuracy(energy):
            energy.accuracy = 83
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*energy.accuracy must be in [[]0, 1[]] (a fraction: 0.83, not 83)*"]
    )


def test_phase_names_are_unique_within_a_test(pytester):
    pytester.makepyfile(
        """
        def test_twice(energy):
            with energy.train("finetune"):
                pass
            with energy.train("finetune"):
                pass
        """
    )
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*phase 'finetune' was already recorded*"])


TORCH_INFERENCE_TEST = """
import torch

def test_linear(energy):
    layer = torch.nn.Linear(64, 32)
    batch = torch.randn(8, 64)
    with energy.train("fit"):
        layer(batch).sum().backward()
    energy.inference(lambda: layer(batch), samples=8)
"""


def counted_iec(pytester, *args) -> float:
    pytester.runpytest(
        "--energy", "--energy-meter", "counted", "--energy-json", "r.json", *args
    ).assert_outcomes(passed=1)
    document = json.loads((pytester.path / "r.json").read_text())
    return document["tests"]["test_counted.py::test_linear"]["meters"]["counted"]


def test_counted_meter_gives_flops_per_sample_through_the_plugin(pytester):
    pytester.makepyfile(test_counted=TORCH_INFERENCE_TEST)
    counted = counted_iec(pytester)
    assert counted["kind"] == "counted"
    assert counted["flops"]["inference_per_sample"] == 2 * 64 * 32
    assert counted["inference"]["calls_per_round"] == 1
    assert counted["tec_joules"] > 0


def test_counted_energy_table_can_be_overridden_from_a_file(pytester):
    pytester.makepyfile(test_counted=TORCH_INFERENCE_TEST)
    default = counted_iec(pytester)["iec_joules_per_sample"]
    # the small layer's operands all fit on chip: free SRAM makes its memory traffic free
    pytester.path.joinpath("table.json").write_text('{"sram_pj_per_64_bits": 0}')
    cheaper = counted_iec(pytester, "--energy-counted-table", "table.json")
    assert cheaper["iec_joules_per_sample"] < default


def test_a_bad_counted_energy_table_names_the_file(pytester):
    pytester.makepyfile(test_counted=TORCH_INFERENCE_TEST)
    pytester.path.joinpath("table.json").write_text("{not json")
    result = pytester.runpytest("--energy", "--energy-counted-table", "table.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*table.json*"])


def test_a_cpu_meter_timed_with_several_torch_threads_gets_one_note_naming_it():
    """The user's threads are left alone; the summary says what they do to CPU figures."""
    from pytest_energy.fixture import spinning_threads_note

    def record(meter: str, threads: int | None) -> dict:
        return {"meters": {meter: {"inference": {"torch_threads": threads}}}}

    note = spinning_threads_note({"a": record("cputime", 2), "b": record("cputime", 4)})
    assert note is not None
    assert note.startswith("cputime timed inference with torch running 4 intra-op threads")
    assert "OMP_NUM_THREADS=1" in note
    assert spinning_threads_note({"a": record("cputime", 1), "b": record("cputime", None)}) is None
    assert spinning_threads_note({"a": record("nvml", 8)}) is None


def test_rounds_last_the_meters_chosen_length_or_the_users_but_never_below_its_resolution():
    from pytest_energy.fixture import round_window_seconds
    from pytest_energy.meters.cputime import CpuTimeMeter
    from pytest_energy.meters.nvml import NvmlMeter

    assert round_window_seconds([CpuTimeMeter]) == CpuTimeMeter.round_seconds
    assert round_window_seconds([CpuTimeMeter], 0.05) == 0.05
    assert round_window_seconds([CpuTimeMeter], 0.001) == CpuTimeMeter.min_window_seconds
    assert round_window_seconds([CpuTimeMeter, NvmlMeter], 0.05) == NvmlMeter.min_window_seconds


@pytest.mark.parametrize("value", ["fast", "0", "-1", "nan"])
def test_a_bad_round_length_is_one_line_naming_the_flag(lifecycle_test, value):
    result = lifecycle_test.runpytest(*CPUTIME, "--energy-round-seconds", value)
    assert result.ret != 0
    result.stderr.fnmatch_lines([f"*--energy-round-seconds: expected seconds > 0, got '{value}'*"])
    assert "Traceback" not in result.stderr.str()
