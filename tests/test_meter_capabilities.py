"""What a meter can promise is said once, on the meter kinds, and read by every consumer."""

import subprocess
import sys

import pytest

from pytest_energy.meters import METER_NAMES, meter_class
from pytest_energy.meters.base import KINDS, Reading, capabilities
from pytest_energy.results import PhaseRecord, zero_joule_warnings


@pytest.mark.parametrize("name", METER_NAMES)
def test_each_meter_class_agrees_with_the_capabilities_of_its_kind(name):
    meter = meter_class(name)
    assert meter.kind in KINDS
    assert meter.deterministic == capabilities(meter.kind).deterministic


def test_only_the_counted_kind_is_deterministic_and_counts_operations():
    assert capabilities("counted").deterministic and capabilities("counted").counts_operations
    for kind in ("measured", "estimated"):
        assert not capabilities(kind).deterministic
        assert not capabilities(kind).counts_operations


def test_a_kind_this_version_does_not_know_is_treated_as_noisy():
    assert not capabilities("from-the-future").deterministic


def test_a_reading_carries_the_capabilities_of_its_kind():
    counted = Reading("counted", "counted", 0.1, {"process": 0.0}, flops=0.0, bytes_moved=0.0)
    timed = Reading("cputime", "estimated", 0.1, {"process": 0.0})
    assert counted.capabilities.counts_operations and not timed.capabilities.counts_operations
    warnings = zero_joule_warnings([PhaseRecord("train", False, {"c": counted, "t": timed})])
    assert "no torch operator ran in it" in warnings[0]
    assert "shorter than the meter resolves" in warnings[1]


def test_the_gate_and_its_exact_rule_never_import_scipy():
    code = (
        "import sys\n"
        "import pytest_energy.plugin, pytest_energy.gate.plugin, pytest_energy.report.markdown\n"
        "from pytest_energy.gate.rules import judge_exact\n"
        "judge_exact(1.06, 1.0, 0.05)\n"
        "assert 'scipy' not in sys.modules, 'scipy imported by the counted path'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
