"""Comparing a run with its baseline: verdicts per test, meter and quantity; the compare CLI."""

import ast
import copy
import json
from pathlib import Path

import pytest
from gate_data import A100, H100, record, recorded, snapshot, with_history

import pytest_energy.gate
from pytest_energy.cli import main
from pytest_energy.config import Tolerance
from pytest_energy.errors import ReportError
from pytest_energy.gate.compare import (
    compare_meter,
    compare_snapshots,
    comparison_from_dict,
    default_gate,
)
from pytest_energy.report.terminal import describe_change, summary_lines
from pytest_energy.results import SCHEMA, SCHEMA_VERSION, dump_json

QUIET = [1.00, 1.01, 0.99, 1.02, 0.98]


def compare_one(now, before, gating=True, **options):
    meter = next(iter(now.record["meters"]))
    return compare_meter(meter, now, before, gating=gating, **options)


def quantity(meter_comparison, name, usage=None):
    return next(q for q in meter_comparison.quantities if q.quantity == name and q.usage == usage)


# --- counted: exact ---------------------------------------------------------------------------


def test_counted_20_percent_more_training_regresses_tec_and_train_heavy_full_cycle():
    result = compare_one(recorded(record(tec=1200.0)), recorded(record(tec=1000.0)))
    assert result.verdict == "regressed"
    assert result.rule == "exact"
    tec = quantity(result, "tec")
    assert (tec.verdict, tec.change_percent) == ("regressed", pytest.approx(20.0))
    assert quantity(result, "full_cycle", 1e3).verdict == "regressed"  # 2200 J vs 2000 J
    assert quantity(result, "full_cycle", 1e6).verdict == "unchanged"  # inference dominates
    assert quantity(result, "iec").verdict == "unchanged"


def test_counted_2_percent_is_within_a_5_percent_tolerance():
    result = compare_one(recorded(record(tec=102.0, rounds=[1.02])), recorded(record()))
    assert result.verdict == "unchanged"
    assert {q.verdict for q in result.quantities} <= {"unchanged", None}


def test_every_quantity_reports_baseline_current_and_change():
    result = compare_one(recorded(record(tec=100.0, rounds=[1.5])), recorded(record()))
    iec = quantity(result, "iec")
    assert (iec.baseline, iec.current, iec.change_percent) == (1.0, 1.5, pytest.approx(50.0))
    full = quantity(result, "full_cycle", 1e6)
    assert full.baseline == pytest.approx(100 + 1e6)
    assert full.current == pytest.approx(100 + 1.5e6)
    green = quantity(result, "greenness", 1e6)
    assert green.verdict is None  # informational
    assert green.current == pytest.approx(0.9 / (100 + 1.5e6))
    assert green.change_percent < 0
    assert full.label == "E(MUI=1e6)" and green.label == "G(MUI=1e6)"


def test_per_quantity_tolerance_from_the_marker_is_used():
    loose_train = record(tec=120.0, tolerance={"train": 0.5, "full_cycle": 0.5})
    result = compare_one(recorded(loose_train), recorded(record(tec=100.0)))
    assert quantity(result, "tec").verdict == "unchanged"
    assert quantity(result, "tec").tolerance_percent == 50.0
    assert result.verdict == "unchanged"


def test_a_tolerance_override_wins_over_the_record():
    result = compare_one(
        recorded(record(tec=120.0)), recorded(record(tec=100.0)), tolerance=Tolerance(0.3, 0.3, 0.3)
    )
    assert result.verdict == "unchanged"


def test_improvement_beyond_tolerance_is_reported():
    assert compare_one(recorded(record(tec=50.0)), recorded(record())).verdict == "improved"


# --- noisy meters: judged on the spread between sessions --------------------------------------

SESSIONS = [100.0, 104.0, 97.0, 102.0, 95.0, 105.0, 99.0, 101.0]


def test_estimated_rise_beyond_the_noise_between_sessions_regresses():
    baseline = with_history(record("cputime", rounds=[1.0]), SESSIONS, [v / 100 for v in SESSIONS])
    raised = record("cputime", tec=150.0, rounds=[1.5])
    result = compare_one(recorded(raised), recorded(baseline))
    assert (result.rule, result.verdict) == ("history", "regressed")
    iec = quantity(result, "iec")
    assert iec.sessions == 8
    assert iec.detectable_percent == pytest.approx(17.0, abs=1.0)
    assert "could detect ≥ 17 %" in describe_change(iec)
    assert result.detection.startswith("8 baseline sessions: could detect TEC ≥ 17 %, IEC ≥ 17 %")
    assert "noise hides the 5 % tolerance" in result.detection
    assert result.detection.endswith("confirm on several with `pytest-energy check --sessions 3`")


def test_rounds_of_one_session_do_not_make_a_drift_significant():
    # Quiet rounds, 10 % higher: the old rule called this significant; 8 sessions that spread
    # ±5 % say a 10 % session is within noise.
    baseline = with_history(record("cputime", rounds=QUIET), SESSIONS, [v / 100 for v in SESSIONS])
    drifted = record("cputime", tec=110.0, rounds=[v * 1.1 for v in QUIET])
    result = compare_one(recorded(drifted), recorded(baseline))
    assert result.verdict == "unchanged"
    assert quantity(result, "tec").note.startswith("within noise; could detect")


def test_an_old_single_session_baseline_is_compared_honestly():
    result = compare_one(
        recorded(record("cputime", tec=300.0, rounds=[3.0])), recorded(record("cputime"))
    )
    assert result.verdict == "unchanged"
    assert "cannot judge: 1 baseline session(s)" in quantity(result, "tec").note
    assert result.detection == "1 baseline sessions: too few to judge the noise between sessions"
    assert result.too_few_sessions


def test_a_non_gating_meter_with_too_few_sessions_is_tallied_as_cannot_judge():
    current = snapshot(test=recorded(record("cputime", tec=300.0, rounds=[3.0])))
    baseline = snapshot(test=recorded(record("cputime")))
    report = compare_snapshots(current, baseline, gate=["counted"])
    assert "not gating cputime: 1 cannot judge (each finding with -v)" in summary_lines(report)


def test_paired_sessions_judge_head_against_base_pair_by_pair():
    base = with_history(record("cputime"), [100.0, 130.0, 70.0, 110.0, 90.0])
    head = with_history(record("cputime"), [125.0, 162.0, 88.0, 138.0, 112.0])
    result = compare_one(recorded(head), recorded(base), paired=True)
    assert (result.rule, quantity(result, "tec").verdict) == ("pairs", "regressed")
    assert result.detection.startswith("5 pairs: could detect TEC")


def test_another_torch_version_makes_a_noisy_meter_incomparable():
    result = compare_one(
        recorded(record("cputime"), torch="2.15.0"),
        recorded(with_history(record("cputime"), SESSIONS), torch="2.14.1"),
    )
    assert result.verdict == "incomparable"
    assert result.reason.startswith("torch 2.14.1 vs 2.15.0: a noisy meter's sessions")


# --- new and incomparable ---------------------------------------------------------------------


def test_no_baseline_is_new():
    result = compare_one(recorded(record()), None)
    assert (result.verdict, result.reason) == ("new", "no baseline for this test")


def test_baseline_from_another_gpu_is_incomparable():
    result = compare_one(
        recorded(record("nvml", rounds=QUIET), hardware=H100),
        recorded(record("nvml", rounds=QUIET), hardware=A100, source="baselines/nvml-a100.json"),
    )
    assert result.verdict == "incomparable"
    assert "baseline from another GPU" in result.reason
    assert "A100" in result.reason
    assert result.baseline_source == "baselines/nvml-a100.json"


def test_gpu_with_another_driver_or_power_limit_is_incomparable():
    other_driver = {**H100, "driver_major": "535"}
    result = compare_one(
        recorded(record("nvml", rounds=QUIET), hardware=H100),
        recorded(record("nvml", rounds=QUIET), hardware=other_driver),
    )
    assert "driver 535" in result.reason


def test_baseline_from_another_cpu_is_incomparable_but_counted_is_not():
    other_cpu = {"cpu_model": "Intel Xeon", "cpu_threads": 8}
    cpu_result = compare_one(
        recorded(record("cputime", rounds=QUIET)),
        recorded(record("cputime", rounds=QUIET), hardware=other_cpu),
    )
    assert cpu_result.verdict == "incomparable"
    assert "another CPU" in cpu_result.reason
    counted_result = compare_one(recorded(record()), recorded(record(), hardware=other_cpu))
    assert counted_result.verdict == "unchanged"


def test_cputime_with_another_wattage_is_incomparable():
    result = compare_one(
        recorded(record("cputime", rounds=QUIET), meter_settings={"watts_per_thread": 4.0}),
        recorded(record("cputime", rounds=QUIET), meter_settings={"watts_per_thread": 6.0}),
    )
    assert result.verdict == "incomparable"
    assert "watts per thread" in result.reason


def test_another_torch_version_is_a_warning_and_the_verdict_stands():
    result = compare_one(
        recorded(record(tec=120.0), torch="2.15.0"), recorded(record(), torch="2.14.1")
    )
    assert result.verdict == "regressed"
    assert any("torch 2.14.1 vs 2.15.0" in warning for warning in result.warnings)


def test_inference_missing_now_is_incomparable_and_new_inference_is_new():
    gone = compare_one(recorded(record(rounds=None)), recorded(record()))
    assert quantity(gone, "iec").verdict == "incomparable"
    added = compare_one(recorded(record()), recorded(record(rounds=None)))
    assert quantity(added, "iec").verdict == "new"
    assert added.verdict == "unchanged"  # TEC still compares


# --- the report -------------------------------------------------------------------------------


def test_default_gate_prefers_measured_then_counted_then_estimated():
    assert default_gate({"nvml": "measured", "counted": "counted", "cputime": "estimated"}) == [
        "nvml"
    ]
    assert default_gate({"counted": "counted", "cputime": "estimated"}) == ["counted"]
    assert default_gate({"cputime": "estimated"}) == ["cputime"]


def cputime_doubled_counted_unchanged():
    """Current and baseline snapshots of one test: counted the same, cputime TEC doubled."""

    def snapshot_with(cputime_tec):
        return {
            "t.py::test": {
                "counted": recorded(record(tec=100.0)),
                "cputime": recorded(
                    with_history(
                        record("cputime", tec=cputime_tec, rounds=QUIET), [cputime_tec] * 3
                    )
                ),
            }
        }

    return snapshot_with(200.0), snapshot_with(100.0)


def test_only_gating_meters_decide_a_tests_verdict():
    report = compare_snapshots(*cputime_doubled_counted_unchanged())
    assert report.gate == ("counted",)
    (test,) = report.tests
    assert test.verdict == "unchanged"
    assert test.meter("cputime").verdict == "regressed"
    assert not test.meter("cputime").gating
    assert not report.regressed
    assert report.findings("regressed", gating=False)


def test_the_terminal_summary_counts_non_gating_findings_unless_verbose():
    report = compare_snapshots(*cputime_doubled_counted_unchanged())

    quiet = summary_lines(report)
    assert "not gating cputime: 1 regressed (each finding with -v)" in quiet
    assert not any(line.startswith("REGRESSED") for line in quiet)
    assert quiet[-1] == "gate counted: 1 unchanged"

    verbose = summary_lines(report, verbose=True)
    assert any(line.startswith("REGRESSED t.py::test [cputime, not gating]") for line in verbose)


def test_report_counts_lists_tests_not_run_and_serialises_to_json():
    current = snapshot(test_a=recorded(record(tec=130.0)), test_b=recorded(record()))
    baseline = snapshot(test_a=recorded(record()), test_gone=recorded(record()))
    report = compare_snapshots(current, baseline, gate=["counted"])
    assert report.regressed
    assert report.counts()["regressed"] == 1 and report.counts()["new"] == 1
    assert report.not_run == ("test_x.py::test_gone",)
    data = json.loads(dump_json(report.to_dict()))  # strict JSON: no NaN or infinity
    assert data["schema"] == "pytest-energy/comparison"
    (regressed,) = [test for test in data["tests"] if test["verdict"] == "regressed"]
    meter = regressed["meters"][0]
    assert meter["meter"] == "counted" and meter["gating"] is True
    tec = next(q for q in meter["quantities"] if q["quantity"] == "tec")
    assert tec["change_percent"] == pytest.approx(30.0)
    assert tec["label"] == "TEC"


# --- pytest-energy compare OLD NEW ------------------------------------------------------------


def results_file(path, **tests):
    document = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "machine": {"cpu_model": "AMD EPYC", "cpu_threads": 2, "versions": {"torch": "2.15.0"}},
        "meters": [{"name": "counted", "kind": "counted"}],
        "tests": {f"test_x.py::{name}": value for name, value in tests.items()},
    }
    path.write_text(dump_json(document))
    return str(path)


def test_cli_compare_prints_verdicts_and_fails_only_with_fail(tmp_path, capsys):
    old = results_file(tmp_path / "old.json", test_a=record(tec=100.0))
    new = results_file(tmp_path / "new.json", test_a=record(tec=120.0))
    assert main(["compare", old, new]) == 0
    out = capsys.readouterr().out
    assert "REGRESSED test_x.py::test_a [counted]" in out
    assert "TEC +20.0 %" in out
    assert main(["compare", old, new, "--fail"]) == 1
    assert main(["compare", old, new, "--fail", "--tolerance", "25%"]) == 0


def test_cli_compare_fail_on_improvement_and_json_output(tmp_path, capsys):
    old = results_file(tmp_path / "old.json", test_a=record(tec=100.0))
    new = results_file(tmp_path / "new.json", test_a=record(tec=50.0))
    assert main(["compare", old, new, "--fail"]) == 0
    out_json = tmp_path / "comparison.json"
    assert main(["compare", old, new, "--fail", "--fail-on-improvement", "--json", str(out_json)])
    assert json.loads(out_json.read_text())["counts"]["improved"] == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"schema": "pytest-energy/results", "vers', "not valid JSON (truncated?)"),
        ("hello", "not valid JSON"),
        ('{"schema": "pytest-energy/results", "version": 1, "tests": []}', "tests: expected an"),
        ('{"schema": "pytest-energy/results", "version": 7, "tests": {}}', "newer pytest-energy"),
        ('{"schema": "something-else", "version": 1}', "schema: expected"),
    ],
)
def test_cli_compare_bad_file_is_one_clear_line(tmp_path, capsys, content, message):
    good = results_file(tmp_path / "good.json", test_a=record())
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["compare", str(bad), good]) == 2
    err = capsys.readouterr().err
    assert f"pytest-energy compare: {bad}" in err
    assert message in err
    assert "Traceback" not in err


def test_cli_compare_bad_tolerance_is_named(tmp_path, capsys):
    good = results_file(tmp_path / "good.json", test_a=record())
    assert main(["compare", good, good, "--tolerance", "lots"]) == 2
    assert "--tolerance: expected a fraction" in capsys.readouterr().err


def alongside(test_record, meter, others):
    test_record["meters"][meter]["alongside"] = others
    return test_record


def test_a_timed_meter_beside_counted_in_one_run_only_is_incomparable():
    # The counted meter's dispatch mode slows the training it shares a window with.
    with_counted = alongside(record("cputime", tec=130.0, rounds=QUIET), "cputime", ["counted"])
    alone = alongside(record("cputime", tec=100.0, rounds=QUIET), "cputime", [])
    comparison = compare_one(recorded(alone), recorded(with_counted))
    assert comparison.verdict == "incomparable"
    assert "the baseline trained beside the counted meter and this run did not" in (
        comparison.reason
    )


def test_the_same_company_or_an_older_record_is_compared_as_usual():
    both = alongside(record("cputime", rounds=QUIET), "cputime", ["counted"])
    assert compare_one(recorded(both), recorded(copy.deepcopy(both))).verdict == "unchanged"
    older = record("cputime", rounds=QUIET)  # recorded before `alongside` existed
    assert compare_one(recorded(both), recorded(older)).verdict == "unchanged"


# --- issue 11: a gate that cannot pass by mistake, outputs that never replace inputs ----------


@pytest.mark.parametrize("gate", ["COUNTED", "nvml", "counted,bogus"])
def test_report_with_an_unknown_or_miscased_gate_is_a_usage_error(tmp_path, capsys, gate):
    old = results_file(tmp_path / "old.json", test_a=record(tec=100.0))
    new = results_file(tmp_path / "new.json", test_a=record(tec=120.0))
    status = main(["report", new, "--baseline", old, "--gate", gate, "--check"])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("pytest-energy report: --gate:")
    assert "not in use in this run (meters: counted)" in error
    assert main(["report", new, "--baseline", old, "--gate", "counted", "--check"]) == 1


def test_outputs_never_replace_an_input_or_a_baseline(tmp_path, capsys):
    old = results_file(tmp_path / "old.json", test_a=record(tec=100.0))
    new = results_file(tmp_path / "new.json", test_a=record(tec=120.0))
    before = (tmp_path / "old.json").read_bytes()
    assert main(["compare", old, new, "--json", old]) == 2
    assert "--json" in capsys.readouterr().err
    assert main(["report", new, "--baseline", old, "--markdown", old]) == 2
    assert "an input of this run" in capsys.readouterr().err
    assert (tmp_path / "old.json").read_bytes() == before


# --- the gate yields numbers; the report formats them -------------------------------------------


@pytest.mark.parametrize("module", ["compare", "rules", "sessions", "store", "profiles"])
def test_the_gates_domain_modules_never_import_the_report(module):
    source = Path(pytest_energy.gate.__file__).parent / f"{module}.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not [name for name in imported if name.startswith("pytest_energy.report")]


# --- one comparison model, from the gate to the markdown ----------------------------------------


def test_a_comparison_read_back_from_json_is_the_comparison_the_gate_made():
    sessions = [100.0, 104.0, 97.0, 101.0, 99.0, 103.0]
    current = snapshot(
        test_a=recorded(record(tec=130.0)),
        test_b=recorded(record("cputime", tec=300.0, rounds=QUIET)),
    )
    baseline = snapshot(
        test_a=recorded(record()),
        test_b=recorded(with_history(record("cputime", rounds=QUIET), sessions)),
        test_gone=recorded(record()),
    )
    report = compare_snapshots(current, baseline, gate=["counted", "cputime"])
    assert any(q.detectable_percent for _, m in report.findings("regressed") for q in m.quantities)
    assert comparison_from_dict(json.loads(dump_json(report.to_dict()))) == report


def test_a_verdict_this_version_does_not_know_reads_as_incomparable_never_as_a_pass():
    data = compare_snapshots(snapshot(test_a=recorded(record())), snapshot()).to_dict()
    data["tests"][0]["verdict"] = "sideways"
    data["tests"][0]["meters"][0]["verdict"] = "sideways"
    (test,) = comparison_from_dict(data).tests
    assert test.verdict == "incomparable"
    assert test.meters[0].verdict == "incomparable"
    assert test.meters[0].reason == "unknown verdict sideways"


def test_something_that_is_not_a_comparison_is_refused_in_one_line():
    with pytest.raises(ReportError, match="must be pytest-energy/comparison data"):
        comparison_from_dict({"tests": "no"})
