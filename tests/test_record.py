"""One typed test record: E(MUI) and G(MUI) derived in one place, read alike by every consumer."""

import json

import pytest
from gate_data import recorded

from pytest_energy.config import LifecycleSettings
from pytest_energy.gate.compare import compare_snapshots
from pytest_energy.gate.sessions import session_figure, session_item
from pytest_energy.meters.base import Reading
from pytest_energy.record import MeterFigures, TestRecord
from pytest_energy.report.model import build_report
from pytest_energy.results import InferenceRecord, PhaseRecord, lifecycle_result, results_document

USAGE = (1e3, 1e6, 1e9)


def reading(joules: float) -> Reading:
    return Reading("cputime", "estimated", 0.1, {"process": joules})


def written_record() -> dict:
    """A test's record as the plugin writes it, read back through JSON as every consumer does."""
    inference = InferenceRecord(samples_per_call=4, warmup_calls=1)
    inference.calls_per_round["cputime"] = 3
    inference.rounds["cputime"] = [reading(0.012), reading(0.0126), reading(0.0131)]
    record = lifecycle_result(
        LifecycleSettings(usage=USAGE, tau=2.0),
        [PhaseRecord("train", False, {"cputime": reading(41.7)})],
        inference,
        accuracy=0.87,
    )
    return json.loads(json.dumps(record))


def test_the_written_full_cycle_list_is_the_records_own_derivation():
    record = written_record()
    figures = TestRecord.from_json(record).meters["cputime"]
    assert figures.iec_joules_per_sample == pytest.approx(0.0126 / 12)
    for entry in record["meters"]["cputime"]["full_cycle"]:
        assert entry["joules"] == figures.full_cycle_joules(entry["usage"])
        assert entry["greenness"] == figures.greenness(entry["usage"], 0.87, 2.0)
        assert (
            entry["joules"] == figures.tec_joules + entry["usage"] * figures.iec_joules_per_sample
        )


def test_the_gate_the_session_history_and_the_report_read_the_same_e_mui():
    record = written_record()
    written = {e["usage"]: e["joules"] for e in record["meters"]["cputime"]["full_cycle"]}
    session = session_item(record["meters"]["cputime"], record["usage"], {})
    report = build_report(results_document({"t.py::test_a": record}, [], {}))
    (row,) = report.rows
    for mui in USAGE:
        assert session_figure(session, "full_cycle", mui) == written[mui]
        assert row.full_cycle_joules[mui] == written[mui]
        assert row.joules_at(mui) == written[mui]
    assert row.greenness == {
        e["usage"]: e["greenness"] for e in record["meters"]["cputime"]["full_cycle"]
    }


def test_the_exact_rule_compares_the_records_e_mui():
    record = written_record()
    record["meters"]["counted"] = {**record["meters"].pop("cputime"), "kind": "counted"}
    later = json.loads(json.dumps(record))
    later["meters"]["counted"]["iec_joules_per_sample"] *= 1.5
    report = compare_snapshots(
        {"t": {"counted": recorded(later)}}, {"t": {"counted": recorded(record)}}
    )
    quantities = {
        q.usage: q for q in report.tests[0].meters[0].quantities if q.quantity == "full_cycle"
    }
    before = TestRecord.from_json(record).meters["counted"]
    now = TestRecord.from_json(later).meters["counted"]
    for mui in USAGE:
        assert quantities[mui].baseline == before.full_cycle_joules(mui)
        assert quantities[mui].current == now.full_cycle_joules(mui)


def test_a_meter_without_inference_has_no_e_mui_and_no_greenness():
    figures = MeterFigures("counted", 12.0, None)
    assert figures.cost is None
    assert figures.full_cycle_entries(USAGE, 0.9, 1.0) == [
        {"usage": mui, "joules": None, "greenness": None} for mui in USAGE
    ]


def test_usage_is_held_once_as_floats():
    record = TestRecord.from_json({"usage": [1000, "1e6"], "meters": {}})
    assert record.usage == (1000.0, 1e6)
