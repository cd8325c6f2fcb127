"""``make gpu-check`` (scripts/gpu_check.py) on a machine without a GPU.

What can run on a CPU is checked here: the one-line skip where NVML sees no GPU, the maths
that compares the energy counter with integrated power, the report, the step runner's time
budgets and failure isolation, the choice of benchmark tests, and the counter step itself,
rehearsed against a stand-in NVML (tests/gpu_check_fake/pynvml.py) with loads on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scripts import gpu_check, gpu_check_steps
from scripts.gpu_check import Step, StepContext, run_step_inline, run_step_isolated, run_steps
from scripts.gpu_check_maths import (
    aligned_window,
    change_times,
    integrate_over,
    relative_difference,
    sample_interval_seconds,
    summarise_differences,
    update_period_seconds,
    value_at,
)
from scripts.gpu_check_report import Figure, Report, StepOutcome, markdown, write_report

REPOSITORY = Path(__file__).resolve().parent.parent
FAKE_NVML = Path(__file__).parent / "gpu_check_fake" / "pynvml.py"


def python_path(*folders: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(str(folder) for folder in (*folders, REPOSITORY))
    environment.pop("GPU_CHECK_DEVICE", None)
    return environment


# ---------------------------------------------------------------- no GPU: one line, exit 0


def test_without_a_gpu_it_prints_one_line_saying_why_and_what_it_would_run(tmp_path):
    no_driver = tmp_path / "no-driver"
    no_driver.mkdir()
    (no_driver / "pynvml.py").write_text(
        textwrap.dedent(
            """
            NVML_ERROR_LIBRARY_NOT_FOUND = 12
            class NVMLError(Exception):
                def __init__(self, value):
                    self.value = value
            def nvmlInit():
                raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
            """
        )
    )
    out = tmp_path / "report"

    finished = subprocess.run(
        [sys.executable, "-m", "scripts.gpu_check", "--out", str(out)],
        cwd=REPOSITORY,
        env=python_path(no_driver),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == ""
    lines = finished.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "gpu-check: skipped, no GPU here (nvml: NVML library not found (no NVIDIA driver)); "
        "on a GPU it runs environment, nvml-tests, nvml-counter, counted-overhead, "
        "paper-dry-run, aa-pair"
    )
    assert str(out) in lines[0]
    assert not out.exists()


def test_an_unknown_step_name_is_one_clear_line(capsys):
    with pytest.raises(SystemExit, match="--only: unknown step nvml-countr; choose from"):
        gpu_check.main(["--only", "nvml-countr"])


def test_list_names_every_step_with_its_budget(capsys):
    assert gpu_check.main(["--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == [step.name for step in gpu_check.STEPS]
    assert sum(step.budget_seconds for step in gpu_check.STEPS) <= gpu_check.DEFAULT_TOTAL_SECONDS
    assert gpu_check.DEFAULT_TOTAL_SECONDS <= 8 * 60


# ---------------------------------------------------------------- the maths


def test_trapezoid_integration_is_exact_for_piecewise_linear_power_between_any_edges():
    samples = [(0.0, 100.0), (1.0, 200.0), (2.0, 200.0), (3.0, 100.0)]

    assert integrate_over(samples, 0.0, 3.0) == pytest.approx(150 + 200 + 150)
    # edges between samples: power interpolated there (125 W at 0.25 s, 150 W at 2.5 s)
    assert integrate_over(samples, 0.25, 2.5) == pytest.approx(
        (125 + 200) / 2 * 0.75 + 200 + (200 + 150) / 2 * 0.5
    )
    assert value_at(samples, 2.5) == pytest.approx(150.0)
    assert integrate_over(samples, 1.0, 1.0) == 0.0


def test_integration_refuses_a_window_the_samples_do_not_cover():
    samples = [(1.0, 100.0), (2.0, 100.0)]
    with pytest.raises(ValueError, match="do not cover"):
        integrate_over(samples, 0.5, 1.5)
    with pytest.raises(ValueError, match="ends"):
        integrate_over(samples, 1.8, 1.2)


def fake_power_and_counter(
    seconds: float, poll_seconds: float = 0.001, update_seconds: float = 0.1
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Power 100 W + 20 W sine, and a millijoule counter of its exact integral, polled."""
    omega = 2 * math.pi / 0.7

    def joules(t: float) -> float:
        return 100 * t + 20 * (1 - math.cos(omega * t)) / omega

    power, counter = [], []
    for index in range(int(seconds / poll_seconds) + 1):
        t = index * poll_seconds
        power.append((t, 100 + 20 * math.sin(omega * t)))
        counter.append(
            (t, float(int(1000 * joules(math.floor(t / update_seconds) * update_seconds))))
        )
    return power, counter


def test_integrated_power_matches_a_known_counter_between_its_updates():
    power, counter = fake_power_and_counter(6.0)

    for start, end in ((0.33, 1.41), (1.05, 4.97), (2.5, 5.5)):
        window = aligned_window(counter, power, start, end)
        assert window is not None
        assert start <= window.start_seconds < start + 0.1 + 0.002
        assert end - 0.1 - 0.002 < window.end_seconds <= end
        assert relative_difference(window.counter_joules, window.power_joules) == pytest.approx(
            0, abs=1e-3
        )


def test_a_counter_read_at_arbitrary_edges_is_off_by_up_to_one_update_period():
    power, counter = fake_power_and_counter(6.0)
    start, end = 0.35, 1.39  # 1.04 s: the counter shows 0.3 .. 1.3, i.e. 1.0 s of energy

    counter_joules = (value_at(counter, end) - value_at(counter, start)) / 1000
    difference = relative_difference(counter_joules, integrate_over(power, start, end))

    assert -0.1 < difference < -0.01
    assert aligned_window(counter, power, 0.31, 0.39) is None  # fewer than two updates inside


def test_update_period_is_the_median_interval_between_observed_changes():
    _, counter = fake_power_and_counter(3.0, poll_seconds=0.003)

    assert update_period_seconds(counter) == pytest.approx(0.1, abs=0.003)
    assert sample_interval_seconds(counter) == pytest.approx(0.003)
    assert len(change_times(counter)) == pytest.approx(30, abs=1)
    assert update_period_seconds([(0.0, 1.0), (0.1, 1.0), (0.2, 2.0)]) is None


def test_differences_are_summarised_against_the_target():
    summary = summarise_differences([0.01, -0.03, 0.005, 0.0], target=0.02)

    assert summary.windows == 4
    assert summary.median == pytest.approx(0.0025)
    assert summary.largest == -0.03
    assert summary.within_target == 3
    assert not summary.all_within_target
    with pytest.raises(ValueError):
        summarise_differences([], 0.02)
    with pytest.raises(ValueError, match="reference is 0"):
        relative_difference(1.0, 0.0)


# ---------------------------------------------------------------- the report


def hand_made_report() -> Report:
    return Report(
        labels={"GPU gpu:0": "NVIDIA H200, measured by energy-counter", "driver": "580.1"},
        steps=[
            StepOutcome("nvml-counter", "counter vs power", "ok", 61.2, 95, notes=("a | b",)),
            StepOutcome("aa-pair", "A/A", "timeout", 100.0, 85, error="stopped after 100 s"),
        ],
        figures=[
            Figure("nvml-counter", "GEMM: windows", 10, kind="outcome", target=">= 10", ok=True),
            Figure("nvml-counter", "GEMM: largest", -2.345678, "%", target="within ±2%", ok=False),
            Figure("nvml-counter", "window", 12.5, "µs", kind="timed"),
            Figure("aa-pair", "TEC, nvml", None, "J"),
        ],
    )


def test_report_json_holds_labels_steps_and_every_figure(tmp_path):
    json_path, markdown_path = write_report(hand_made_report(), tmp_path / "out")

    document = json.loads(json_path.read_text())
    assert document["schema"] == "pytest-energy/gpu-check"
    assert document["labels"]["driver"] == "580.1"
    assert [step["status"] for step in document["steps"]] == ["ok", "timeout"]
    assert document["steps"][0]["notes"] == ["a | b"]
    assert len(document["figures"]) == 4
    assert document["figures"][1] == {
        "step": "nvml-counter",
        "name": "GEMM: largest",
        "value": -2.345678,
        "unit": "%",
        "kind": "measured",
        "target": "within ±2%",
        "ok": False,
        "note": "",
    }
    assert markdown_path.read_text() == markdown(hand_made_report())
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "gpu-check.json",
        "gpu-check.md",
    ]


def test_report_markdown_is_a_table_of_steps_and_of_figures():
    text = markdown(hand_made_report())

    assert "- driver: 580.1" in text
    assert "| nvml-counter | ok | 1 | 61.2 | 95 | a \\| b |" in text
    assert "| aa-pair | timeout | 0 | 100.0 | 85 | stopped after 100 s |" in text
    assert (
        "| nvml-counter | GEMM: largest | -2.346 | % | measured | within ±2% | MISSED |  |" in text
    )
    assert "| nvml-counter | GEMM: windows | 10 |  | outcome | >= 10 | ok |  |" in text
    assert "| aa-pair | TEC, nvml | — | J | measured |  |  |  |" in text


def test_a_figure_kind_must_say_how_it_was_obtained():
    with pytest.raises(ValueError, match="figure kind"):
        Figure("s", "n", 1.0, kind="guessed")


# ---------------------------------------------------------------- budgets and isolation


STEP_MODULE = """
import os
import time


def records_then_raises(context):
    context.add("before the error", 1.5, "J")
    raise RuntimeError("the GPU fell off the bus")


def fine(context):
    context.add("a figure", 2, "tests", kind="outcome", target="2", ok=True)
    context.note("all good")


def records_then_hangs(context):
    context.add("before the hang", 3.0, "s", kind="timed")
    time.sleep(120)


def crashes(context):
    os._exit(3)


def one_part_fails(context):
    with context.part("first part"):
        raise ValueError("bad shape")
    context.add("second part's figure", 4.0, "W")


def sleeps_two_seconds(context):
    time.sleep(2)


def watches_its_budget(context):
    while context.seconds_left() > 0.2:
        time.sleep(0.05)
    context.add("stopped in time", round(context.seconds_left(), 1), "s", kind="timed")
"""


@pytest.fixture
def step_module(tmp_path, monkeypatch):
    folder = tmp_path / "steps"
    folder.mkdir()
    (folder / "fake_gpu_steps.py").write_text(STEP_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def fake_step(function: str, budget: float = 30.0) -> Step:
    return Step(function, f"fake {function}", f"fake_gpu_steps:{function}", budget)


def test_a_step_that_raises_still_yields_a_report_and_the_next_step_runs(tmp_path, step_module):
    seen: list[tuple[int, int]] = []
    outcomes, figures = run_steps(
        [fake_step("records_then_raises"), fake_step("fine")],
        tmp_path,
        total_seconds=60,
        isolate=False,
        progress=lambda line: None,
        after_step=lambda outcomes, figures: seen.append((len(outcomes), len(figures))),
    )

    assert [(outcome.name, outcome.status) for outcome in outcomes] == [
        ("records_then_raises", "failed"),
        ("fine", "ok"),
    ]
    assert outcomes[0].error == "RuntimeError: the GPU fell off the bus"
    assert [figure.name for figure in figures] == ["before the error", "a figure"]
    assert seen == [(1, 1), (2, 2)]  # the report can be rewritten after every step
    json_path, _ = write_report(Report({}, outcomes, figures), tmp_path)
    assert json.loads(json_path.read_text())["steps"][0]["status"] == "failed"


def test_a_failing_part_is_noted_and_the_rest_of_the_step_runs(tmp_path, step_module):
    outcome, figures = run_step_inline(fake_step("one_part_fails"), tmp_path, 30)

    assert outcome.status == "failed"
    assert outcome.error == "failed parts: first part"
    assert outcome.notes == ("first part failed: ValueError: bad shape",)
    assert [figure.name for figure in figures] == ["second part's figure"]


def test_a_step_reads_its_own_budget(tmp_path, step_module):
    started = time.monotonic()
    outcome, figures = run_step_inline(fake_step("watches_its_budget"), tmp_path, 0.6)

    assert outcome.status == "ok"
    assert time.monotonic() - started < 2
    assert figures[0].name == "stopped in time"


def test_isolated_steps_are_stopped_at_budget_and_keep_what_they_recorded(tmp_path, step_module):
    environment = python_path(step_module)
    started = time.monotonic()

    hung, hung_figures = run_step_isolated(
        fake_step("records_then_hangs"), tmp_path, 2.0, environment, grace_seconds=1.0
    )
    crashed, _ = run_step_isolated(fake_step("crashes"), tmp_path, 20, environment)
    raised, _ = run_step_isolated(fake_step("records_then_raises"), tmp_path, 20, environment)
    fine, fine_figures = run_step_isolated(fake_step("fine"), tmp_path, 20, environment)

    assert time.monotonic() - started < 60
    assert hung.status == "timeout"
    assert hung.error.startswith("stopped after")
    assert [figure.name for figure in hung_figures] == ["before the hang"]
    assert hung.log == "logs/records_then_hangs.log"
    assert crashed.status == "failed"
    assert "exited with status 3" in crashed.error
    assert raised.status == "failed"
    assert raised.error == "RuntimeError: the GPU fell off the bus"
    assert fine.status == "ok"
    assert fine.notes == ("all good",)
    assert fine_figures == [
        Figure("fine", "a figure", 2, "tests", "outcome", "2", True, ""),
    ]


def test_steps_past_the_runs_time_limit_are_skipped_not_started(tmp_path, step_module):
    lines: list[str] = []
    outcomes, _ = run_steps(
        [fake_step("sleeps_two_seconds", budget=30), fake_step("fine")],
        tmp_path,
        total_seconds=gpu_check.MIN_STEP_SECONDS + gpu_check.REPORT_RESERVE_SECONDS + 1,
        isolate=False,
        progress=lines.append,
    )

    assert [outcome.status for outcome in outcomes] == ["ok", "skipped"]
    assert outcomes[0].budget_seconds < 30
    assert outcomes[1].error.startswith("no time left in the run's")
    assert lines[-1] == "gpu-check [2/2] fine: skipped (no time left)"


# ---------------------------------------------------------------- running the plugin uninstalled


def test_the_entry_point_shim_makes_pytest_find_the_plugin_without_installing_it(tmp_path):
    gpu_check.write_plugin_shim(tmp_path, "9.9.9")
    probe = (
        "import importlib.metadata as m; "
        "print(m.version('pytest-energy'), "
        "[e.value for e in m.entry_points(group='pytest11') if e.name == 'energy'])"
    )

    finished = subprocess.run(
        [sys.executable, "-c", probe],
        env=python_path(tmp_path),
        cwd=tmp_path,  # not the checkout, where an editable install leaves its own egg-info
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert finished.stdout.strip() == "9.9.9 ['pytest_energy.plugin']"
    assert gpu_check.project_version() == "0.1.0" or gpu_check.project_version()[0].isdigit()


def test_step_processes_find_the_checkout_first():
    environment = gpu_check.step_environment(Path("/tmp/shim"))
    assert environment["PYTHONPATH"].split(os.pathsep)[:2] == [str(REPOSITORY), "/tmp/shim"]
    assert "PYTEST_ADDOPTS" not in environment


# ---------------------------------------------------------------- what the benchmark steps read


def test_one_test_per_family_reference_first_and_skipped_families_named():
    tests = [
        ("benchmarks/test_baseline.py::test_uncompressed_base_model", {"method": "uncompressed"}),
        ("benchmarks/test_nas.py::test_darts", {"family": "nas", "method": "darts"}),
        ("benchmarks/test_nas.py::test_random_search", {"family": "nas", "method": "random"}),
        ("benchmarks/test_pruning.py::test_channel_pruning[fpgm]", {"family": "pruning"}),
        ("benchmarks/test_distillation.py::test_distillation[kd]", {"family": "distillation"}),
        ("benchmarks/test_quantization.py::test_post_training_int8[x]", {"family": "quantization"}),
    ]

    chosen, skipped = gpu_check_steps.select_per_family(
        tests, {"pruning": "torch-pruning is not installed here"}
    )

    assert chosen == [
        ("baseline", "benchmarks/test_baseline.py::test_uncompressed_base_model"),
        ("quantization", "benchmarks/test_quantization.py::test_post_training_int8[x]"),
        ("distillation", "benchmarks/test_distillation.py::test_distillation[kd]"),
        ("nas", "benchmarks/test_nas.py::test_darts"),
    ]
    assert skipped == {"pruning": "torch-pruning is not installed here"}


def test_results_and_junit_files_are_read_into_figures(tmp_path):
    document = {
        "tests": {
            "b.py::test_b": {"meters": {"nvml": {"kind": "measured", "tec_joules": 5.0}}},
            "a.py::test_a": {
                "meters": {
                    "counted": {"kind": "counted", "tec_joules": 1.0, "iec_joules_per_sample": 0.1}
                }
            },
        }
    }
    figures = gpu_check_steps.results_figures(document)
    assert [(f.nodeid, f.meter, f.tec_joules, f.iec_joules_per_sample) for f in figures] == [
        ("a.py::test_a", "counted", 1.0, 0.1),
        ("b.py::test_b", "nvml", 5.0, None),
    ]

    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_x" name="test_ok" time="1.5"/>'
        '<testcase classname="tests.test_x" name="test_bad" time="0.1">'
        '<failure message="assert 1 == 2">trace</failure></testcase>'
        '<testcase classname="tests.test_x" name="test_gpu" time="0">'
        '<skipped message="needs an NVIDIA driver"/></testcase>'
        '<testcase time="0.01"/>'  # what pytest adds for an interrupted session
        "</testsuite></testsuites>"
    )
    summary = gpu_check_steps.read_junit(junit)
    assert summary.outcomes == {
        "tests.test_x::test_ok": "passed",
        "tests.test_x::test_bad": "failed",
        "tests.test_x::test_gpu": "skipped",
    }
    assert summary.seconds["tests.test_x::test_ok"] == 1.5
    assert summary.messages["tests.test_x::test_gpu"] == "needs an NVIDIA driver"


def test_a_command_past_its_time_limit_is_interrupted_then_reported(tmp_path):
    script = "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('stop')\n"
    result = gpu_check_steps.run_command(
        [sys.executable, "-c", script], tmp_path / "log.txt", seconds=1.0
    )

    assert result.timed_out
    assert result.seconds < 10
    assert "stop" in result.output().splitlines()[-1]


# ---------------------------------------------------------------- the counter step, rehearsed


def tiny_training(torch, batch_size):
    """A small CNN's SGD step: stands in for ResNet-56, whose step takes seconds on this CPU."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.randn(batch_size, 3, 16, 16), torch.randint(0, 10, (batch_size,))

    def step():
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()

    return step


@pytest.fixture
def stand_in_gpu(monkeypatch):
    """The stand-in NVML as ``pynvml``, the steps' loads on the CPU, a small CNN for ResNet-56."""
    monkeypatch.setattr(gpu_check_steps, "resnet56_training", tiny_training)
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML)
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv(gpu_check_steps.DEVICE_VARIABLE, "cpu")
    return fake


def test_the_counter_step_rehearsed_on_a_stand_in_gpu(tmp_path, stand_in_gpu, monkeypatch):
    monkeypatch.setattr(gpu_check_steps, "WINDOW_SECONDS", (0.25,) * 10)
    monkeypatch.setattr(gpu_check_steps, "WARMUP_SECONDS", 0.05)
    context = StepContext("nvml-counter", tmp_path, budget_seconds=120)

    gpu_check_steps.nvml_counter(context)

    assert context.failed_parts == []
    figures = {figure.name: figure for figure in context.figures}
    assert figures["gpu:0 measured by"].value == "energy-counter"
    assert figures["fallback meter measures by"].value == "power-polling"
    for load in ("GEMM", "ResNet-56 training"):
        assert figures[f"{load}: windows"].value == 10
        assert figures[f"{load}: windows"].ok
        assert figures[f"{load}: mean power by the counter"].value == pytest.approx(100, rel=0.15)
        aligned = figures[
            f"{load}: counter between its own updates vs integrated nvmlDeviceGetPowerUsage, "
            "largest"
        ]
        # How close it comes depends on polling lag on this shared CPU; the maths is checked
        # exactly above. Here: every window was compared.
        assert math.isfinite(aligned.value)
        assert aligned.note.endswith("of 10 windows within ±2 %")
        fallback = figures[f"{load}: power-polling fallback meter vs nvml meter (counter), median"]
        assert math.isfinite(fallback.value)
    assert figures["energy counter update period (observed)"].value == pytest.approx(0.1, abs=0.02)
    assert figures["nvml window (start + stop), energy counter, CUDA initialised"].unit == "µs"
    assert (tmp_path / "nvml-windows.json").exists()
    assert (tmp_path / "nvml-samples.csv.gz").exists()


def test_the_counted_overhead_step_rehearsed_on_a_stand_in_gpu(tmp_path, stand_in_gpu):
    context = StepContext("counted-overhead", tmp_path, budget_seconds=120)

    gpu_check_steps.counted_overhead(context)

    assert context.failed_parts == []
    figures = {figure.name: figure for figure in context.figures}
    assert figures["counted FLOPs per step"].value > 0
    assert figures["counted FLOPs per step"].kind == "counted"
    assert figures["counted energy per step"].value > 0
    assert "counted meter: slowdown of a ResNet-56 step (window per step)" in figures
    for meters in ("nvml", "counted", "nvml + counted"):
        assert figures[f"energy.train window (empty), {meters}"].value > 0
    assert "energy.train per step, nvml + counted: slowdown of a ResNet-56 step" in figures


def test_the_dry_run_option_is_found_in_the_benchmark_conftest_without_importing_it(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    conftest = tmp_path / "benchmarks" / "conftest.py"
    assert not gpu_check_steps.benchmark_has_dry_run(tmp_path)
    conftest.write_text('parser.addoption("--energy-scale")\n')
    assert not gpu_check_steps.benchmark_has_dry_run(tmp_path)
    conftest.write_text('group.addoption("--energy-dry-run", action="store_true")\n')
    assert gpu_check_steps.benchmark_has_dry_run(tmp_path)


def test_the_dry_run_stand_in_keeps_the_paper_models_on_the_smoke_schedule():
    from benchmarks.lowcarbon.scales import PAPER, SMOKE
    from scripts.gpu_check_pytest import dry_run_scale

    scale = dry_run_scale(PAPER, SMOKE)

    assert scale.name == "paper"
    assert (scale.base_depth, scale.student_depth, scale.settings) == (
        PAPER.base_depth,
        PAPER.student_depth,
        PAPER.settings,
    )
    assert (scale.base_epochs, scale.distill_epochs) == (SMOKE.base_epochs, SMOKE.distill_epochs)
    assert scale.synthetic_train_count == SMOKE.synthetic_train_count > 0
    assert scale.search.retrain_cells == PAPER.search.retrain_cells
    assert scale.search.search_epochs == SMOKE.search.search_epochs


def test_a_whole_run_on_a_stand_in_gpu_writes_and_prints_the_report(tmp_path):
    environment = python_path(FAKE_NVML.parent)
    environment[gpu_check_steps.DEVICE_VARIABLE] = "cpu"
    out = tmp_path / "gpu-check"

    finished = subprocess.run(
        [sys.executable, "-m", "scripts.gpu_check", "--out", str(out), "--only", "environment"],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
    document = json.loads((out / "gpu-check.json").read_text())
    assert document["labels"]["GPU gpu:0"].startswith("Stand-in GPU (tests/gpu_check_fake)")
    assert document["labels"]["driver"] == "0.0-fake"
    assert document["labels"]["torch"]
    assert [(step["name"], step["status"]) for step in document["steps"]] == [("environment", "ok")]
    assert document["steps"][0]["notes"] == ["rehearsal on cpu: no CUDA round trip"]
    assert "| environment | ok | 0 |" in finished.stdout
    assert finished.stdout.rstrip().endswith(
        f"wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}"
    )
    assert (out / "logs" / "environment.log").exists()


REFERENCE = "benchmarks/test_baseline.py::test_uncompressed_base_model"
KD = "benchmarks/test_distillation.py::test_distillation[kd]"


def results_document(tec_joules: float) -> dict:
    meters = {
        "nvml": {"kind": "measured", "tec_joules": tec_joules, "iec_joules_per_sample": 0.2},
        "counted": {"kind": "counted", "tec_joules": 14.7, "iec_joules_per_sample": 4e-4},
    }
    return {"tests": {REFERENCE: {"meters": meters}}}


class FakeSessions:
    """Stands in for the pytest sessions a step starts: writes the files pytest would."""

    def __init__(self, tec_joules=(100.0, 103.0)):
        self.commands: list[list[str]] = []
        self.tec_joules = list(tec_joules)

    def __call__(self, arguments, log, seconds, environment=None, wind_down_seconds=10.0):
        self.commands.append(list(arguments))
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("fake\n")
        options = dict(
            arg.split("=", 1) for arg in arguments if arg.startswith("--") and "=" in arg
        )
        if "--junitxml" in options:
            Path(options["--junitxml"]).write_text(
                '<testsuites><testsuite><testcase classname="benchmarks.test_baseline" '
                'name="test_uncompressed_base_model" time="12.5"/><testcase time="0"/>'
                "</testsuite></testsuites>"
            )
        if "--energy-json" in options:
            document = results_document(self.tec_joules.pop(0))
            Path(options["--energy-json"]).write_text(json.dumps(document))
        if "compare" in arguments:
            verdicts = {"nodeid": REFERENCE, "meters": [{"meter": "nvml", "verdict": "unchanged"}]}
            Path(arguments[arguments.index("--json") + 1]).write_text(
                json.dumps({"tests": [verdicts]})
            )
        return gpu_check_steps.CommandResult(0, False, 0.1, log)


@pytest.fixture
def fake_benchmark(monkeypatch):
    mode = gpu_check_steps.BenchmarkMode(
        options=("--energy-scale", "paper", "--energy-dry-run"),
        environment={},
        tests=(
            (REFERENCE, {"family": "baseline", "method": "uncompressed"}),
            (KD, {"family": "distillation", "method": "kd"}),
        ),
    )
    monkeypatch.setattr(gpu_check_steps, "benchmark_mode", lambda context, seconds: mode)
    sessions = FakeSessions()
    monkeypatch.setattr(gpu_check_steps, "run_command", sessions)
    return sessions


def test_the_paper_dry_run_step_reads_outcomes_and_energy_per_test_and_meter(
    tmp_path, fake_benchmark
):
    context = StepContext("paper-dry-run", tmp_path, budget_seconds=60)

    gpu_check_steps.paper_dry_run(context)

    (command,) = fake_benchmark.commands
    assert command[command.index("pytest") + 3 : command.index("pytest") + 5] == [REFERENCE, KD]
    assert "--energy-dry-run" in command
    assert command[command.index("--energy-meter") + 1] == "nvml,counted"
    figures = {figure.name: figure for figure in context.figures}
    assert figures["chosen tests that passed"].value == 1
    assert figures["chosen tests that passed"].ok is False
    assert figures["test_baseline.py::test_uncompressed_base_model: outcome"].value == "passed"
    assert figures["test_baseline.py::test_uncompressed_base_model: seconds"].value == 12.5
    assert figures["test_distillation.py::test_distillation[kd]: outcome"].value == "not run"
    nvml_tec = figures["test_baseline.py::test_uncompressed_base_model: TEC, nvml"]
    assert (nvml_tec.value, nvml_tec.unit, nvml_tec.kind) == (100.0, "J", "measured")
    counted_iec = figures["test_baseline.py::test_uncompressed_base_model: IEC, counted"]
    assert (counted_iec.value, counted_iec.unit, counted_iec.kind) == (4e-4, "J/sample", "counted")


def test_the_aa_step_without_ab_runs_two_sessions_and_compares_them(
    tmp_path, fake_benchmark, monkeypatch
):
    monkeypatch.setattr(gpu_check_steps, "ab_available", lambda context: "no ab here")
    context = StepContext("aa-pair", tmp_path, budget_seconds=60)

    gpu_check_steps.aa_pair(context)

    first, second, compare = fake_benchmark.commands
    assert first[first.index("--energy-meter") + 1] == "nvml"
    assert [arg for arg in first if not arg.startswith("--energy-json")] == [
        arg for arg in second if not arg.startswith("--energy-json")
    ]
    assert compare[compare.index("compare") + 1 :][:2] == [
        str(tmp_path / "aa-session-1.json"),
        str(tmp_path / "aa-session-2.json"),
    ]
    assert context.notes == ["no ab here: ran two sessions + pytest-energy compare instead"]
    figures = {figure.name: figure for figure in context.figures}
    name = "test_baseline.py::test_uncompressed_base_model, nvml"
    assert figures[f"{name}: TEC session 1"].value == 100.0
    assert figures[f"{name}: TEC session 2 vs 1"].value == pytest.approx(3.0)
    verdict = figures["test_baseline.py::test_uncompressed_base_model: gate verdict, nvml"]
    assert (verdict.value, verdict.ok) == ("unchanged", True)


def test_the_aa_step_uses_pytest_energy_ab_where_it_can_run(tmp_path, fake_benchmark, monkeypatch):
    monkeypatch.setattr(gpu_check_steps, "ab_available", lambda context: None)
    context = StepContext("aa-pair", tmp_path, budget_seconds=60)

    gpu_check_steps.aa_pair(context)

    (command,) = fake_benchmark.commands
    cli = command.index("pytest_energy.cli")
    assert command[cli + 1 : cli + 7] == ["ab", "HEAD", "HEAD", "--pairs", "1", "--"]
    assert command[cli + 7] == REFERENCE
    figure = context.figures[-1]
    assert (figure.name, figure.value, figure.ok) == (
        "pytest-energy ab HEAD HEAD --pairs 1: exit status",
        0,
        True,
    )
