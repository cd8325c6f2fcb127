"""Bad input and misuse, through pytester: one clear line, no traceback, nothing lost (issue 11)."""

from __future__ import annotations

import json
import math

import pytest

from pytest_energy.config import LifecycleSettings as Defaults
from pytest_energy.config import lifecycle_settings, parse_tolerance
from pytest_energy.errors import ConfigError, ImplausibleReading
from pytest_energy.meters.base import Reading

CPUTIME = ["--energy", "--energy-meter", "cputime", "--energy-rounds", "2"]

ONE_TEST = """
import pytest

@pytest.mark.lifecycle(method="m")
def test_m(energy):
    with energy.train("t"):
        sum(range(50_000))
    energy.inference(lambda: sum(range(2_000)), samples=4)
"""


def no_traceback_from_the_plugin(result) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text
    assert "pytest_energy/" not in text, "a frame from inside pytest_energy was shown"


# --- options: finite, plausible figures, named by flag or ini key ----------------------------


@pytest.mark.parametrize("watts", ["inf", "nan", "-4", "0", "1e308", "abc"])
def test_an_impossible_cpu_wattage_is_refused_naming_the_flag(pytester, watts):
    pytester.makepyfile(ONE_TEST)
    result = pytester.runpytest(*CPUTIME, f"--energy-cpu-watts={watts}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--energy-cpu-watts: expected watts per hardware thread*"])
    no_traceback_from_the_plugin(result)


def test_an_ini_error_names_the_ini_key_not_the_flag(pytester):
    pytester.makeini("[pytest]\nenergy_cpu_watts = abc\n")
    pytester.makepyfile(ONE_TEST)
    result = pytester.runpytest(*CPUTIME)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini energy_cpu_watts in *tox.ini (the ini form of --energy-cpu-watts)*'abc'*"]
    )


@pytest.mark.parametrize("usage", ["1e19", "inf", "-1"])
def test_an_impossible_usage_is_refused_naming_the_flag(pytester, usage):
    pytester.makepyfile(ONE_TEST)
    result = pytester.runpytest(f"--energy-usage={usage}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--energy-usage: *"])


@pytest.mark.parametrize("written", ["5", 5, "2"])
def test_a_bare_tolerance_of_one_or_more_is_an_error_suggesting_a_percentage(written):
    with pytest.raises(ConfigError, match=r"Write '\d%'"):
        parse_tolerance(written, "lifecycle(tolerance=...)")
    assert parse_tolerance("5%").train == pytest.approx(0.05)


# --- the marker: one place knows its keywords ------------------------------------------------


def test_a_misspelled_marker_keyword_is_refused_with_a_suggestion(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.lifecycle(tolerence=0.5)
        def test_m(energy):
            pass
        """
    )
    result = pytester.runpytest()  # caught without --energy too
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*unknown lifecycle keyword tolerence=; did you mean tolerance=?*"]
    )
    no_traceback_from_the_plugin(result)


def test_free_labels_stay_free():
    settings = lifecycle_settings((), {"teacher": "resnet18", "task": "cifar"}, Defaults(), "x")
    assert dict(settings.labels) == {"teacher": "resnet18", "task": "cifar"}


@pytest.mark.parametrize("energy_flag", [[], CPUTIME])
def test_the_marker_on_a_test_without_the_fixture_is_said(pytester, energy_flag):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.lifecycle(method="m")
        def test_m():
            pass
        """
    )
    result = pytester.runpytest(*energy_flag)
    if energy_flag:  # measuring was asked for and nothing can be: the test errors
        result.assert_outcomes(errors=1)
    else:  # a fast functional run: a warning
        result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*does not take the `energy` fixture, so nothing is measured*"])


# --- the fixture: misuse fails the same with and without --energy -----------------------------

MISUSE = {
    "nested": """
def test_m(energy):
    with energy.train("a"):
        with energy.train("b"):
            pass
""",
    "inference twice": """
def test_m(energy):
    energy.inference(lambda: 1)
    energy.inference(lambda: 1)
""",
    "inference inside train": """
def test_m(energy):
    with energy.train("a"):
        energy.inference(lambda: 1)
""",
    "accuracy True": """
def test_m(energy):
    energy.accuracy = True
""",
    "a generator": """
def test_m(energy):
    energy.inference(lambda: (x for x in range(3)))
""",
}


@pytest.mark.parametrize("energy_flag", [[], CPUTIME], ids=["without --energy", "with --energy"])
@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_fails_with_and_without_energy(pytester, case, energy_flag):
    pytester.makepyfile(MISUSE[case])
    result = pytester.runpytest(*energy_flag)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*MeasurementError: *"])


def test_zero_inference_energy_is_flagged(pytester):
    pytester.makepyfile(
        """
        def test_m(energy):
            with energy.train("t"):
                sum(range(1000))
            energy.inference(lambda: None, samples=1)
        """
    )
    result = pytester.runpytest("--energy", "--energy-meter", "counted", "--energy-rounds", "1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*warning: *test_m: counted: inference read 0 J per sample (no torch operator ran in it)"]
    )


# --- files: outputs never crash, never overwrite, fail the run when not written ----------------


def test_a_report_under_a_regular_file_is_named_and_the_run_still_reports(pytester):
    pytester.makepyfile(ONE_TEST)
    (pytester.path / "some-file").write_text("keep\n")
    result = pytester.runpytest(*CPUTIME, "--energy-markdown=some-file/out.md")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--energy-markdown 'some-file/out.md': *some-file is a regular*"])
    assert (pytester.path / "some-file").read_text() == "keep\n"


def test_a_failed_results_write_exits_non_zero_and_the_summary_still_shows(pytester, monkeypatch):
    pytester.makepyfile(ONE_TEST)
    target = pytester.path / "out" / "results.json"
    target.parent.mkdir()
    target.write_text("{}\n")
    target.parent.chmod(0o500)
    try:
        result = pytester.runpytest(*CPUTIME, f"--energy-json={target}")
    finally:
        target.parent.chmod(0o700)
    if result.ret == pytest.ExitCode.OK:
        pytest.skip("running as root: the read-only directory is writable")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*TEC*", "*not in the results: --energy-json*cannot write*"])
    assert target.read_text() == "{}\n"
    no_traceback_from_the_plugin(result)


def test_an_infinite_figure_is_refused_in_json_naming_the_test_and_other_outputs_are_written(
    pytester,
):
    pytester.makepyfile(ONE_TEST)
    pytester.makeconftest(
        """
        import math
        import pytest
        from pytest_energy.plugin import SESSION_KEY

        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish(session):  # a meter that overflowed, as a broken one could
            for result in session.config.stash[SESSION_KEY].results.values():
                result["meters"]["cputime"]["tec_joules"] = math.inf
        """
    )
    result = pytester.runpytest(
        *CPUTIME, "--energy-json=results.json", "--energy-markdown=report.md"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        ["*--energy-json 'results.json': not written: *test_m.meters.cputime.tec_joules = inf*"]
    )
    result.stdout.fnmatch_lines(["*energy report not written: --energy-markdown: not written*"])
    assert not (pytester.path / "results.json").exists()
    assert not (pytester.path / "report.md").exists()
    no_traceback_from_the_plugin(result)


def test_a_good_results_file_is_whole_json(pytester):
    pytester.makepyfile(ONE_TEST)
    result = pytester.runpytest(*CPUTIME, "--energy-json=results.json")
    assert result.ret == pytest.ExitCode.OK
    assert json.loads((pytester.path / "results.json").read_text())["tests"]


# --- the rootdir: node ids cannot be re-keyed silently ----------------------------------------


def test_a_rootdir_moved_by_an_option_value_is_refused(pytester, monkeypatch):
    project = pytester.mkdir("project")
    (project / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (project / "test_m.py").write_text(ONE_TEST)
    outside = pytester.mkdir("elsewhere")
    monkeypatch.chdir(project)
    result = pytester.runpytest_subprocess(
        *CPUTIME, "--energy-baselines", str(outside), "--energy-save", "--energy-prune"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*pytest chose the rootdir * because it read --energy-baselines */elsewhere as a test*"]
    )
    assert list(outside.iterdir()) == []


def test_a_baselines_directory_that_is_a_file_is_an_error(pytester):
    pytester.makepyfile(ONE_TEST)
    (pytester.path / "b").write_text("not a directory\n")
    result = pytester.runpytest(*CPUTIME, "--energy-baselines=b")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--energy-baselines b: *b is a file, not a directory*"])
    assert (pytester.path / "b").read_text() == "not a directory\n"


@pytest.mark.parametrize("joules", [-5.0, math.inf, math.nan])
def test_a_reading_with_an_impossible_figure_is_refused_where_it_is_made(joules):
    with pytest.raises(ImplausibleReading, match=r"rapl: refused a reading with joules\['cpu"):
        Reading("rapl", "measured", 1.0, {"cpu:package-0": joules})
