"""``pytest_energy.measure()``: the meters outside pytest, for scripts and notebooks."""

from __future__ import annotations

import pytest

import pytest_energy
from pytest_energy.errors import ConfigError, MeasurementError, MeterUnavailable


def busy(iterations: int = 200_000) -> int:
    return sum(value * value for value in range(iterations))


def test_a_with_block_gives_readings_labelled_with_their_kind():
    with pytest_energy.measure("train", meters="cputime", cpu_watts_per_thread=10.0) as m:
        busy()

    reading = m.readings["cputime"]
    assert reading.kind == "estimated"
    assert reading.joules > 0
    assert m.joules == {"cputime": reading.joules}
    assert m.seconds == reading.seconds
    assert m.summary().startswith("train: cputime (estimated) ")
    assert m.to_dict()["meters"]["cputime"]["kind"] == "estimated"


def test_auto_says_which_meters_it_left_out_and_why():
    with pytest_energy.measure("train") as m:
        busy()
    assert "cputime" in m.readings or any(k == "measured" for k in m.readings)
    for name in ("nvml", "rapl", "cputime", "counted"):
        assert name in m.readings or m.not_used[name]


def test_a_decorated_function_is_measured_on_every_call():
    @pytest_energy.measure("predict", meters="cputime")
    def predict(iterations: int) -> int:
        return busy(iterations)

    assert predict(1000) == busy(1000)
    predict(100_000)
    assert predict.__name__ == "predict"
    assert len(predict.energy.windows) == 2
    assert predict.energy.readings is predict.energy.windows[-1]


def test_counted_counts_torch_work_in_a_window():
    torch = pytest.importorskip("torch")
    with pytest_energy.measure("infer", meters=["counted"]) as m:
        torch.ones(8, 8) @ torch.ones(8, 8)
    assert m.readings["counted"].kind == "counted"
    assert m.readings["counted"].flops == 2 * 8 * 8 * 8


def test_nested_windows_are_refused_in_one_line():
    inner = pytest_energy.measure("inner", meters="cputime")
    with (
        pytest_energy.measure("outer", meters="cputime"),
        pytest.raises(MeasurementError, match=r"measure\('inner'\) was opened inside "),
        inner,
    ):
        pass
    with pytest_energy.measure("after", meters="cputime") as m:  # the outer one closed cleanly
        busy(10)
    assert m.readings


def test_an_unknown_meter_is_named_with_the_choices():
    with pytest.raises(ConfigError) as error:
        pytest_energy.measure("train", meters="nvm")
    message = str(error.value)
    assert "\n" not in message
    assert "unknown meter 'nvm'; choose from auto, nvml, rapl, cputime, counted" in message


def test_a_named_meter_that_does_not_work_here_says_why(tmp_path):
    window = pytest_energy.measure("train", meters="rapl", rapl_root=str(tmp_path / "none"))
    with pytest.raises(MeterUnavailable, match=r"measure\('train'\): rapl: "), window:
        pass


def test_a_script_outside_pytest_prints_its_reading(pytester):
    script = pytester.makepyfile(
        train="""
        import pytest_energy

        with pytest_energy.measure("train", meters="cputime", cpu_watts_per_thread=5) as m:
            sum(i * i for i in range(100_000))
        print(m.summary())
        """
    )
    result = pytester.runpython(script)
    result.stdout.re_match_lines([r"train: cputime \(estimated\) \S+ m?J in \S+ s"])
