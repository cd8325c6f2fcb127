"""The results record: TEC, IEC and E(MUI) per meter, built from readings."""

import pytest

from pytest_energy.config import LifecycleSettings
from pytest_energy.meters.base import Reading
from pytest_energy.results import (
    InferenceRecord,
    PhaseRecord,
    dump_json,
    lifecycle_result,
    write_json_atomic,
)


def reading(joules: float, kind: str = "estimated", meter: str = "cputime", **extra) -> Reading:
    return Reading(
        meter=meter, kind=kind, seconds=0.1, joules_by_domain={"process": joules}, **extra
    )


def test_tec_sums_charged_and_own_phases_and_iec_is_the_median_round():
    phases = [
        PhaseRecord("base-training", charged=True, readings={"cputime": reading(100.0)}),
        PhaseRecord("finetune", charged=False, readings={"cputime": reading(20.0)}),
    ]
    inference = InferenceRecord(samples_per_call=10, warmup_calls=1)
    inference.calls_per_round["cputime"] = 5
    inference.rounds["cputime"] = [reading(0.5), reading(0.6), reading(5.0)]  # 50 samples each
    result = lifecycle_result(
        LifecycleSettings(usage=(1e3,), tau=1.0), phases, inference, accuracy=0.8
    )
    cputime = result["meters"]["cputime"]
    assert cputime["tec_joules"] == pytest.approx(120.0)
    assert cputime["inference"]["joules_per_sample"] == pytest.approx([0.01, 0.012, 0.1])
    assert cputime["iec_joules_per_sample"] == pytest.approx(0.012)  # an outlier round is ignored
    (entry,) = cputime["full_cycle"]
    assert entry["joules"] == pytest.approx(120.0 + 1e3 * 0.012)
    assert entry["greenness"] == pytest.approx(0.8 / entry["joules"])


def test_counted_results_carry_flops_and_bytes_per_sample():
    inference = InferenceRecord(samples_per_call=4, warmup_calls=1)
    inference.calls_per_round["counted"] = 1
    inference.rounds["counted"] = [
        reading(2e-3, kind="counted", meter="counted", flops=4e6, bytes_moved=8e3)
    ]
    result = lifecycle_result(LifecycleSettings(), [], inference, accuracy=None)
    counted = result["meters"]["counted"]
    assert counted["flops"]["inference_per_sample"] == 1e6
    assert counted["bytes_moved"]["inference_per_sample"] == 2e3
    assert counted["iec_joules_per_sample"] == pytest.approx(5e-4)


def test_a_phase_that_read_zero_joules_is_named_in_the_warnings():
    phases = [
        PhaseRecord("prune", charged=False, readings={"rapl": reading(0.0, kind="measured")}),
        PhaseRecord("plain-python", charged=False, readings={"counted": reading(0.0, "counted")}),
    ]
    warnings = lifecycle_result(LifecycleSettings(), phases, None, None)["warnings"]
    assert warnings == [
        "rapl: phase 'prune' read 0 J in 0.1 s "
        "(shorter than the meter resolves, or the counter did not update)",
        "counted: phase 'plain-python' read 0 J in 0.1 s (no torch operator ran in it)",
    ]


def test_a_test_without_inference_has_no_full_cycle_energy():
    phases = [PhaseRecord("train", charged=False, readings={"cputime": reading(1.0)})]
    result = lifecycle_result(LifecycleSettings(usage=(10.0,)), phases, None, None)
    assert result["meters"]["cputime"]["full_cycle"] == [
        {"usage": 10.0, "joules": None, "greenness": None}
    ]


def test_json_is_written_with_sorted_keys_and_replaces_the_file_whole(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == dump_json({"a": [1, 2], "b": 1})
    assert target.read_text().index('"a"') < target.read_text().index('"b"')
    assert [path.name for path in tmp_path.iterdir()] == ["results.json"]


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text('{"old": true}\n')

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(target, {"new": True})
    assert target.read_text() == '{"old": true}\n'
    assert [path.name for path in tmp_path.iterdir()] == ["results.json"]
