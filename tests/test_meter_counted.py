"""The ``counted`` meter: deterministic energy from counted MACs and bytes moved.

Each test states one rule of the meter; together they document what a counted figure means.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading

import pytest
import torch
from torch import nn

from pytest_energy.errors import ConfigError, MeasurementError
from pytest_energy.fixture import energy_fixture_with
from pytest_energy.meters import counted as counted_module
from pytest_energy.meters.counted import (
    DEFAULT_ENERGY_TABLE_PICOJOULES,
    ENERGY_TABLE_SOURCE,
    CountedMeter,
    bookkeeping_seconds_per_call,
    count,
    load_energy_table,
)
from pytest_energy.meters.cputime import CpuTimeMeter

PICO = 1e-12
FP32_MAC_PICOJOULES = 3.7 + 0.9
INT8_MAC_PICOJOULES = 0.2 + 0.1  # int8 multiply, int32 accumulate
DRAM_PICOJOULES_PER_BYTE = 640 / 4
SRAM_PICOJOULES_PER_BYTE = 100 / 8
FP32_BYTES = 4

quantization_warnings = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::UserWarning"
)


def without_seconds(reading):
    return dataclasses.replace(reading, seconds=0.0)


# --- the meter protocol ---------------------------------------------------------------------


def test_counted_meter_identifies_itself_and_needs_only_torch():
    meter = CountedMeter()
    assert (meter.name, meter.kind, meter.min_window_seconds) == ("counted", "counted", 0.0)
    assert CountedMeter.unavailable_reason() is None


def test_describe_gives_the_energy_table_and_its_source():
    description = CountedMeter().describe()
    assert description["name"] == "counted"
    assert description["energy_table_picojoules"] == dict(DEFAULT_ENERGY_TABLE_PICOJOULES)
    assert description["energy_table_source"] == "Horowitz ISSCC 2014, 45 nm"


def test_an_empty_window_counts_nothing_and_reports_both_domains():
    meter = CountedMeter()
    meter.start()
    reading = meter.stop()
    assert reading.meter == "counted" and reading.kind == "counted"
    assert reading.joules_by_domain == {"compute": 0.0, "memory": 0.0}
    assert (reading.flops, reading.bytes_moved) == (0, 0)
    assert reading.seconds >= 0


def test_only_work_inside_the_window_is_counted():
    layer = nn.Linear(8, 8)
    x = torch.randn(2, 8)
    meter = CountedMeter()
    layer(x)
    meter.start()
    with torch.no_grad():
        layer(x)
    reading = meter.stop()
    layer(x)
    assert reading.flops == 2 * 2 * 8 * 8


def test_work_on_other_threads_is_not_counted():
    x = torch.randn(32, 32)
    meter = CountedMeter()
    meter.start()
    worker = threading.Thread(target=lambda: x @ x)
    worker.start()
    worker.join()
    assert meter.stop().flops == 0


def test_windows_cannot_nest_and_stop_needs_a_start():
    meter = CountedMeter()
    with pytest.raises(MeasurementError, match="without start"):
        meter.stop()
    meter.start()
    with pytest.raises(MeasurementError, match="window is open"):
        meter.start()
    meter.stop()


def dispatch_mode_state():
    """What torch knows of the active dispatch modes: its three flags and its mode stack."""
    from torch.utils import _python_dispatch as python_dispatch

    return (
        python_dispatch._is_in_torch_dispatch_mode,
        python_dispatch._is_in_non_infra_torch_dispatch_mode,
        python_dispatch._is_in_any_mode_without_ignore_compile_internals,
        [torch._C._get_dispatch_stack_at(i) for i in range(torch._C._len_torch_dispatch_stack())],
    )


def test_a_window_leaves_torchs_dispatch_modes_as_it_found_them():
    """counted ends a window with a quicker copy of torch's mode exit, used only where torch's
    exit is the one it copies (this torch's: the assertion below says it is in use)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class UsersMode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    assert counted_module._counting_mode_class().__exit__ is not TorchDispatchMode.__exit__
    meter = CountedMeter()
    before = dispatch_mode_state()
    meter.start()
    assert dispatch_mode_state() != before
    meter.stop()
    assert dispatch_mode_state() == before
    with UsersMode():
        in_users_mode = dispatch_mode_state()
        meter.start()
        torch.ones(2) + 1
        assert meter.stop().flops == 0  # an add: bytes, no MACs
        assert dispatch_mode_state() == in_users_mode
    assert dispatch_mode_state() == before


def test_a_window_ignores_torch_compile_and_restores_the_users_stance_after_it():
    """In a window compiled code runs eagerly (torch.compile's force_eager stance), set by a
    quicker copy of torch's stance change on this torch; the user's stance comes back."""
    from torch._dynamo import eval_frame

    assert counted_module._quick_force_eager(eval_frame) is not None
    meter = CountedMeter()
    with torch.compiler.set_stance("eager_on_recompile"):
        users_stance = eval_frame._stance
        meter.start()
        assert eval_frame._stance.stance == "force_eager"
        meter.stop()
        assert eval_frame._stance is users_stance
    meter.start()
    meter.close()
    assert eval_frame._stance.stance == "default"


def test_compiled_code_runs_compiled_again_after_a_window():
    runs_of_the_compiled_graph = []

    def recording_backend(graph, example_inputs):
        def run(*args):
            runs_of_the_compiled_graph.append(1)
            return graph(*args)

        return run

    model = nn.Linear(4, 4)
    compiled = torch.compile(model, backend=recording_backend)
    x = torch.randn(2, 4)
    compiled(x)
    assert count(lambda: compiled(x)).flops == 2 * (2 * 4 * 4)  # in the window: its eager code
    runs_before = len(runs_of_the_compiled_graph)
    compiled(x)
    assert len(runs_of_the_compiled_graph) == runs_before + 1


def test_close_ends_a_window_left_open():
    meter = CountedMeter()
    meter.start()
    meter.close()
    meter.start()  # a closed window does not block the next one
    assert meter.stop().flops == 0


# --- what is counted ------------------------------------------------------------------------


def test_linear_layer_flops_bytes_and_joules_follow_the_rules():
    batch, features_in, features_out = 4, 5, 3
    layer = nn.Linear(features_in, features_out)
    x = torch.randn(batch, features_in)
    with torch.no_grad():
        reading = count(lambda: layer(x))

    macs = batch * features_in * features_out
    assert reading.flops == 2 * macs
    # weight.t() is a view and moves nothing; addmm reads input, weight and bias, writes output.
    elements = batch * features_in + features_out * features_in + features_out
    elements += batch * features_out
    assert reading.bytes_moved == elements * FP32_BYTES
    assert reading.joules_by_domain["compute"] == pytest.approx(macs * FP32_MAC_PICOJOULES * PICO)
    # every operand fits the 1 MiB on-chip capacity: all at SRAM energy
    assert reading.details["bytes_moved_by_level"] == {"sram": elements * FP32_BYTES, "dram": 0}
    assert reading.joules_by_domain["memory"] == pytest.approx(
        elements * FP32_BYTES * SRAM_PICOJOULES_PER_BYTE * PICO
    )
    assert reading.details["macs_by_precision"] == {"fp32": macs}
    assert reading.details["flops_by_operator"] == {"aten.addmm": 2 * macs}


def test_the_same_work_counts_the_same_under_grad_no_grad_and_inference_mode():
    layer = nn.Linear(16, 4)
    x = torch.randn(3, 16)
    with_grad = count(lambda: layer(x))
    with torch.no_grad():
        no_grad = count(lambda: layer(x))
    with torch.inference_mode():
        inference = count(lambda: layer(x))
    assert without_seconds(with_grad) == without_seconds(no_grad) == without_seconds(inference)


def test_views_move_no_bytes_and_copies_read_and_write():
    x = torch.randn(64, 32)
    views = count(lambda: (x.view(32, 64), x.t(), x.detach(), x[1:], x.expand(2, 64, 32)))
    assert views.bytes_moved == 0
    copied = count(lambda: x.clone())
    assert copied.bytes_moved == 2 * x.nbytes
    converted = count(lambda: x.to(torch.float16))
    assert converted.bytes_moved == x.nbytes + x.numel() * 2


def test_in_place_operators_read_and_write_their_target():
    x = torch.randn(100)
    reading = count(lambda: x.add_(1.0))
    assert reading.bytes_moved == 2 * x.nbytes


def test_half_precision_macs_are_priced_at_the_fp16_row():
    a = torch.randn(8, 16, dtype=torch.bfloat16)
    b = torch.randn(16, 4, dtype=torch.bfloat16)
    reading = count(lambda: a @ b)
    macs = 8 * 16 * 4
    assert reading.details["macs_by_precision"] == {"fp16": macs}
    assert reading.joules_by_domain["compute"] == pytest.approx(macs * (1.1 + 0.4) * PICO)


# --- whole models ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval(), torchvision


def test_resnet18_macs_match_torchvision_published_gflops(resnet18):
    model, torchvision = resnet18
    published_giga_macs = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_ops"]
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        reading = count(lambda: model(image))
        with torch.utils.flop_counter.FlopCounterMode(display=False) as flop_counter:
            model(image)

    # flop_counter counts 2 FLOPs per multiply-accumulate; torchvision's "GFLOPS" are MACs.
    assert reading.flops == flop_counter.get_total_flops()
    giga_macs = reading.details["macs_by_precision"]["fp32"] / 1e9
    assert giga_macs == pytest.approx(reading.flops / 2 / 1e9)
    assert giga_macs == pytest.approx(published_giga_macs, rel=0.01)


def test_the_same_model_counted_twice_gives_identical_readings(resnet18):
    model, _ = resnet18
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        first = count(lambda: model(image))
        second = count(lambda: model(image))
    assert without_seconds(first) == without_seconds(second)
    assert first.joules > 0


class SmallCnn(nn.Module):
    """Conv-BN-ReLU then Linear, with the stubs eager-mode quantization needs."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        x = self.relu(self.bn(self.conv(self.quant(x))))
        return self.dequant(self.fc(self.pool(x).flatten(1)))


@pytest.fixture
def quantization_engine():
    engines = torch.backends.quantized.supported_engines
    engine = next((name for name in ("x86", "fbgemm") if name in engines), None)
    if engine is None:
        pytest.skip(f"no x86/fbgemm quantized engine in {engines}")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    yield engine
    torch.backends.quantized.engine = previous


@quantization_warnings
def test_int8_model_costs_less_than_its_fp32_twin_and_its_int8_macs_are_counted(
    quantization_engine,
):
    quantization = torch.ao.quantization
    torch.manual_seed(0)
    fp32_model = SmallCnn().eval()
    int8_model = copy.deepcopy(fp32_model)
    int8_model.qconfig = quantization.get_default_qconfig(quantization_engine)
    quantization.fuse_modules(int8_model, [["conv", "bn", "relu"]], inplace=True)
    quantization.prepare(int8_model, inplace=True)
    int8_model(torch.randn(8, 3, 32, 32))
    quantization.convert(int8_model, inplace=True)

    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fp32 = count(lambda: fp32_model(image))
        int8 = count(lambda: int8_model(image))

    conv_macs = 16 * 3 * 3 * 3 * 32 * 32
    linear_macs = 16 * 10
    assert fp32.details["macs_by_precision"] == {"fp32": conv_macs + linear_macs}
    assert int8.details["macs_by_precision"] == {"int8": conv_macs + linear_macs}
    assert set(int8.details["flops_by_operator"]) == {"quantized.conv2d_relu", "quantized.linear"}
    assert int8.joules_by_domain["compute"] == pytest.approx(
        (conv_macs + linear_macs) * INT8_MAC_PICOJOULES * PICO
    )
    assert int8.bytes_moved < fp32.bytes_moved
    assert int8.joules < fp32.joules


@quantization_warnings
def test_dynamically_quantized_linear_is_counted_at_int8():
    model = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(nn.Linear(32, 8)), {nn.Linear}, dtype=torch.qint8
    )
    reading = count(lambda: model(torch.randn(4, 32)))
    assert reading.details["macs_by_precision"] == {"int8": 4 * 32 * 8}


def test_a_training_step_counts_forward_backward_and_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))

    def training_step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    with torch.no_grad():
        forward = count(lambda: model(images))
    training = count(training_step)

    assert "aten.convolution_backward" in training.details["flops_by_operator"]
    assert training.flops > 2 * forward.flops
    assert training.bytes_moved > forward.bytes_moved
    assert training.joules > forward.joules


def test_backward_run_inside_a_window_is_counted_on_its_own():
    layer = nn.Linear(8, 4)
    loss = layer(torch.randn(2, 8)).sum()
    backward = count(loss.backward)
    # grad of weight: (4×2)@(2×8); the input needs no gradient.
    assert backward.details["flops_by_operator"] == {"aten.mm": 2 * 4 * 2 * 8}


# --- counting's own cost in a window shared with a timed meter --------------------------------


def test_the_cost_of_counting_one_call_is_measured_without_touching_the_users_seed():
    rng_before = torch.random.get_rng_state()
    per_call = bookkeeping_seconds_per_call()
    assert 0 <= per_call < 1e-3  # seconds per call; 0 only where it could not be measured
    assert torch.equal(torch.random.get_rng_state(), rng_before)


def test_counting_states_its_own_cpu_time_as_calls_times_the_cost_of_one(monkeypatch):
    monkeypatch.setattr(counted_module, "bookkeeping_seconds_per_call", lambda: 5e-6)
    layer = nn.Linear(8, 4)
    meter = CountedMeter()
    meter.start()
    layer(torch.randn(2, 8))
    reading = meter.stop()
    spent = meter.bookkeeping(reading)
    assert spent.meter == "counted"
    assert spent.cpu_seconds == pytest.approx(reading.details["operator_calls"] * 5e-6)
    assert f"{reading.details['operator_calls']} operator calls × 5.00 µs" in spent.how
    meter.start()
    assert meter.bookkeeping(meter.stop()) is None  # an empty window cost nothing to count


def test_a_train_window_shared_with_cputime_charges_counting_to_nobody():
    cputime = CpuTimeMeter(watts_per_thread=10.0, count_children=False)
    energy = energy_fixture_with([cputime, CountedMeter()], "test_meter_counted.py::shared")
    layer = nn.Linear(64, 64)
    with energy.train("steps"):
        for _ in range(20):
            layer(torch.randn(16, 64)).sum().backward()
    readings = energy.phases[-1].readings
    removed = readings["cputime"].details["bookkeeping_removed"]["counted"]
    calls = readings["counted"].details["operator_calls"]
    counting_seconds = calls * bookkeeping_seconds_per_call()
    window_seconds = readings["cputime"].details["cpu_seconds"] + removed["cpu_seconds"]
    if counting_seconds < window_seconds:
        assert removed["cpu_seconds"] == pytest.approx(counting_seconds)
    else:  # a per-call cost that cannot hold for this window is named, not removed
        assert removed["cpu_seconds"] == 0.0
        assert "not removed" in removed["how"]
    assert readings["cputime"].joules_by_domain["process"] >= 0
    assert readings["counted"].details.get("bookkeeping_removed") is None  # counted is exact


# --- the energy table -----------------------------------------------------------------------


def test_a_table_override_changes_the_figure():
    layer = nn.Linear(10, 10)
    x = torch.randn(1, 10)
    default = count(lambda: layer(x))
    dearer = count(lambda: layer(x), energy_table={"fp32_mult_pj": 3.7 * 3, "fp32_add_pj": 0.9 * 3})
    assert dearer.joules_by_domain["compute"] == pytest.approx(
        3 * default.joules_by_domain["compute"]
    )
    assert dearer.joules_by_domain["memory"] == default.joules_by_domain["memory"]
    assert dearer.details["energy_table_picojoules"]["fp32_mult_pj"] == pytest.approx(11.1)
    assert "overridden: fp32_add_pj, fp32_mult_pj" in dearer.details["energy_table_source"]
    assert dearer.details["energy_table_source"].startswith(ENERGY_TABLE_SOURCE)


def test_an_unknown_table_key_is_named_in_the_error():
    with pytest.raises(ConfigError, match="fp64_mult_pj"):
        CountedMeter(energy_table={"fp64_mult_pj": 9.0})


@pytest.mark.parametrize("value", ["3.7", -1.0, float("nan"), True])
def test_a_table_value_must_be_a_finite_non_negative_number(value):
    with pytest.raises(ConfigError, match="fp32_mult_pj"):
        CountedMeter(energy_table={"fp32_mult_pj": value})


def test_a_table_file_holds_overrides_for_the_constructor(tmp_path):
    table_file = tmp_path / "table.json"
    table_file.write_text(json.dumps({"dram_pj_per_32_bits": 1280}))
    overrides = load_energy_table(table_file)
    assert overrides == {"dram_pj_per_32_bits": 1280.0}
    assert CountedMeter(overrides).energy_table["dram_pj_per_32_bits"] == 1280.0


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{not json", "not valid JSON"),
        ("[3.7, 0.9]", "expected a JSON object"),
        ('{"fp32_mul_pj": 3.7}', "unknown key 'fp32_mul_pj'"),
        ('{"fp32_mult_pj": "high"}', "fp32_mult_pj must be a number"),
    ],
)
def test_a_bad_table_file_is_named_in_the_error(tmp_path, content, complaint):
    table_file = tmp_path / "table.json"
    table_file.write_text(content)
    with pytest.raises(ConfigError, match=complaint) as raised:
        load_energy_table(table_file)
    assert str(table_file) in str(raised.value)


def test_a_missing_table_file_is_named_in_the_error(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(ConfigError, match="cannot be read") as raised:
        load_energy_table(missing)
    assert str(missing) in str(raised.value)
