"""Reports grouped by task: a run of unrelated models reads as several small papers.

Each task (its ``task`` label, else its ``dataset``, else its reference's model lineage) gets
its own reference, break-even points, winners, Pareto fronts and charts; ``--energy-reference``
takes one spec for all tasks and ``TASK=LABEL=VALUE`` specs for single tasks.
"""

from __future__ import annotations

import pytest
from report_data import lifecycle_record, results_document

from pytest_energy.errors import ConfigError
from pytest_energy.report.markdown import render_markdown
from pytest_energy.report.model import build_report
from pytest_energy.report.tasks import References, assign_tasks, parse_references


def record(method, tec, iec, *, model, dataset=None, family="pruning", **labels):
    result = lifecycle_record(method, tec, iec, family=family, model=model)
    if dataset:
        result["labels"]["dataset"] = dataset
    result["labels"].update(labels)
    return result


def three_tasks() -> dict:
    """An MNIST CNN, two language models on one corpus and a ViT: three tasks, not one."""
    return {
        "test_cnn.py::test_cnn": record(
            "uncompressed", 100.0, 1e-3, model="cnn", dataset="mnist", family="baseline"
        ),
        "test_cnn.py::test_cnn_pruned": record("l1", 150.0, 5e-4, model="cnn", dataset="mnist"),
        "test_lm.py::test_lstm": record(
            "lstm", 5e4, 2e-2, model="lstm", dataset="wikitext-2", family="baseline"
        ),
        "test_lm.py::test_transformer": record(
            "transformer", 8e4, 1e-2, model="transformer", dataset="wikitext-2"
        ),
        "test_vit.py::test_vit": record(
            "uncompressed", 1e6, 0.5, model="vit-b16", family="baseline"
        ),
        "test_vit.py::test_vit_pruned": record("taylor", 1.2e6, 0.3, model="vit-b16"),
    }


def test_a_test_belongs_to_its_task_label_then_dataset_then_reference_lineage():
    tests = {
        "a": {"labels": {"task": "lm", "dataset": "wikitext-2", "model": "lstm"}},
        "b": {"labels": {"dataset": "mnist", "model": "cnn"}},
        "c": {"labels": {"method": "uncompressed", "model": "vit-b16"}},
        "d": {"labels": {"method": "taylor", "model": "vit-b16"}},
        "e": {"labels": {"method": "kd", "model": "vit-tiny", "teacher": "vit-b16"}},
        "f": {"labels": {"method": "alone", "model": "gru"}},
        "g": {"labels": {}},
    }
    assert assign_tasks(tests) == {
        "a": "lm",
        "b": "mnist",
        "c": "vit-b16",
        "d": "vit-b16",
        "e": "vit-b16",  # a distilled student belongs with its teacher's task
        "f": "gru",
        "g": "—",
    }


def test_reference_specs_split_into_run_wide_and_per_task():
    assert parse_references(None) == References()
    assert parse_references("auto") == References()
    assert parse_references("method=uncompressed") == References("method=uncompressed")
    assert parse_references("mnist=method=cnn, wikitext-2=test_lm.py::test_lstm") == References(
        None, {"mnist": "method=cnn", "wikitext-2": "test_lm.py::test_lstm"}
    )
    both = parse_references("family=baseline,lm=method=lstm")
    assert (both.for_task("lm"), both.for_task("other")) == ("method=lstm", "family=baseline")


@pytest.mark.parametrize("spec", ["mnist==cnn", "mnist=method=", "a=b,c=d"])
def test_an_unreadable_reference_is_one_line_naming_the_flag(spec):
    with pytest.raises(ConfigError, match=r"^--energy-reference: ") as error:
        parse_references(spec)
    assert "\n" not in str(error.value)


def test_each_task_is_compared_with_its_own_reference_only():
    report = build_report(results_document(three_tasks()))
    assert report.tasks == ["mnist", "vit-b16", "wikitext-2"]
    by_task = {lifecycle.task: lifecycle for lifecycle in report.lifecycles}
    pairs = {
        task: [(entry.row.method, entry.reference.method) for entry in view.break_evens]
        for task, view in by_task.items()
    }
    assert pairs == {
        "mnist": [("l1", "uncompressed")],
        "vit-b16": [("taylor", "uncompressed")],
        "wikitext-2": [("transformer", "lstm")],
    }
    assert {row.method for row in by_task["mnist"].pareto[1e9]} <= {"uncompressed", "l1"}
    assert by_task["wikitext-2"].leaders[-1].lowest_energy.method == "transformer"


def test_a_task_can_be_given_its_own_reference():
    tests = three_tasks()
    tests["test_lm.py::test_lstm"]["labels"]["family"] = "architecture"  # no auto reference now
    auto = build_report(results_document(tests))
    text = {lifecycle.task: lifecycle.reference_missing for lifecycle in auto.lifecycles}
    assert text["wikitext-2"].startswith("no reference row")
    assert text["mnist"] is None

    chosen = build_report(results_document(tests), reference="wikitext-2=method=transformer")
    (view,) = [lifecycle for lifecycle in chosen.lifecycles if lifecycle.task == "wikitext-2"]
    assert [(e.row.method, e.reference.method) for e in view.break_evens] == [
        ("lstm", "transformer")
    ]


def test_the_markdown_reads_as_one_small_paper_per_task():
    text = render_markdown(results_document(three_tasks()))
    assert "**3 tasks**, each compared within itself" in text
    sections = text.split("## Every task")[0].split("## Task `")[1:]
    assert [section.split("`", 1)[0] for section in sections] == ["mnist", "vit-b16", "wikitext-2"]
    mnist, vit, lm = sections
    assert "uncompressed (cnn)" in mnist and "lstm" not in mnist and "taylor" not in mnist
    assert "| transformer (transformer) | lstm (lstm) |" in lm and "cnn" not in lm
    assert 'title "Task vit-b16: Full-cycle energy, counted (counted)"' in vit


def test_a_single_task_run_reads_as_before():
    tests = {nodeid: r for nodeid, r in three_tasks().items() if nodeid.startswith("test_cnn")}
    text = render_markdown(results_document(tests))
    assert "## Task" not in text and "tasks**" not in text
    assert "### Results per family" in text


def test_the_chart_draws_one_row_of_panels_per_task_and_meter(tmp_path):
    pytest.importorskip("matplotlib")
    from pytest_energy.report.charts import draw_report

    figure = draw_report(build_report(results_document(three_tasks())))
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[0::2] == [
        "Task mnist — Full-cycle energy — counted (counted)",
        "Task vit-b16 — Full-cycle energy — counted (counted)",
        "Task wikitext-2 — Full-cycle energy — counted (counted)",
    ]
    full_cycle_lines = [line.get_label() for line in figure.axes[0].get_lines()]
    assert not any("lstm" in label or "taylor" in label for label in full_cycle_lines)


MULTI_TASK_TESTS = """
import pytest

def work(n):
    return sum(i * i for i in range(n))

@pytest.mark.lifecycle(family="baseline", method="uncompressed", model="cnn", dataset="mnist")
def test_cnn(energy):
    with energy.train("train"):
        work(50_000)
    energy.inference(lambda: work(2_000), samples=4)

@pytest.mark.lifecycle(family="pruning", method="pruned", model="cnn", dataset="mnist")
def test_cnn_pruned(energy):
    with energy.train("train"):
        work(60_000)
    energy.inference(lambda: work(1_000), samples=4)

@pytest.mark.lifecycle(family="baseline", method="lstm", model="lstm", dataset="wikitext-2")
def test_lstm(energy):
    with energy.train("train"):
        work(80_000)
    energy.inference(lambda: work(3_000), samples=4)

@pytest.mark.lifecycle(family="architecture", method="transformer", model="transformer",
                       dataset="wikitext-2")
def test_transformer(energy):
    with energy.train("train"):
        work(90_000)
    energy.inference(lambda: work(2_500), samples=4)
"""


def test_a_run_with_two_tasks_and_a_reference_per_task(pytester):
    pytester.makepyfile(test_tasks=MULTI_TASK_TESTS)
    result = pytester.runpytest(
        "--energy", "--energy-meter", "cputime", "--energy-rounds", "2",
        "--energy-reference", "wikitext-2=method=lstm",
        "--energy-markdown", "report.md",
    )  # fmt: skip
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["task: mnist", "*family: baseline*", "task: wikitext-2"])
    text = (pytester.path / "report.md").read_text()
    assert "| pruned (cnn) | uncompressed (cnn) |" in text
    assert "| transformer (transformer) | lstm (lstm) |" in text
    assert "| transformer (transformer) | uncompressed (cnn) |" not in text
