"""The benchmark suite's options: scale labels on every lifecycle test, paper scale skipped with
the expected file names when CIFAR-10 is not there, never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bench_data import write_cifar10

from benchmarks.conftest import scale_labels
from benchmarks.lowcarbon.scales import PAPER, SMOKE, dry_run

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
LIFECYCLE_FILES = sorted(
    str(path) for path in BENCHMARKS.glob("test_*.py") if path.name != "test_distributed.py"
)

LABEL_DUMP = """
def pytest_collection_finish(session):
    for item in session.items:
        marker = item.get_closest_marker("lifecycle")
        if marker is not None:
            labels = ",".join(f"{key}={value}" for key, value in sorted(marker.kwargs.items()))
            print(f"LABELS {item.name} {labels}")
"""


def collected_labels(pytester: pytest.Pytester, *options: str) -> dict[str, dict[str, str]]:
    pytester.makepyfile(label_dump=LABEL_DUMP)
    result = pytester.runpytest_subprocess(
        *LIFECYCLE_FILES, "--collect-only", "-q", "-p", "label_dump", *options
    )
    assert result.ret == 0, result.stdout.str()
    labels = {}
    for line in result.stdout.lines:
        if line.startswith("LABELS "):
            _, name, pairs = line.split(" ", 2)
            labels[name] = dict(pair.split("=", 1) for pair in pairs.split(","))
    return labels


def test_role_placeholders_name_the_models_of_each_scale():
    assert scale_labels(SMOKE) == {
        "base": "resnet8",
        "pruned": "resnet8-pruned50",
        "pruned_aggressive": "resnet8-pruned75",
        "student": "resnet8-w8",
        "deep_student": "resnet14-w8",
        "search_network": "darts-cells3-c8",
        "dataset": "synthetic",
    }
    paper = scale_labels(PAPER)
    assert (paper["base"], paper["student"], paper["dataset"]) == (
        "resnet56",
        "resnet20",
        "cifar10",
    )


@pytest.mark.parametrize(
    ("options", "base", "student", "deep_student", "dataset"),
    [
        ((), "resnet8", "resnet8-w8", "resnet14-w8", "synthetic"),
        (("--energy-scale", "paper"), "resnet56", "resnet20", "resnet32", "cifar10"),
    ],
    ids=["smoke", "paper"],
)
def test_every_benchmark_is_labelled_with_family_method_model_dataset_and_scale(
    pytester, options, base, student, deep_student, dataset
):
    labels = collected_labels(pytester, *options)

    assert len(labels) >= 27, "32 lifecycle tests, the two data-parallel ones aside"
    families = {entry["family"] for entry in labels.values()}
    assert families == {"baseline", "pruning", "quantization", "distillation", "nas"}
    for name, entry in labels.items():
        assert {"family", "method", "model", "dataset", "scale"} <= entry.keys(), name
        assert "{" not in ",".join(entry.values()), name
        assert entry["dataset"] == dataset
    assert labels["test_uncompressed_base_model"]["model"] == base
    assert labels["test_distillation[crd]"]["model"] == student
    assert labels["test_distillation[crd]"]["teacher"] == base
    assert labels["test_pwlq_4bit_simulated"]["simulated"] == "yes"
    assert "mixed-precision" in labels["test_zeroq_data_free_int8"]["omitted"]
    assert labels["test_distillation[fsp]"]["connector"] == "1x1-conv+bn"
    assert labels["test_distillation[crd]"]["smoke_scale"] == "not-converged"
    assert labels["test_distillation[kd]"]["smoke_scale"] == "not-converged"
    assert "smoke_scale" not in labels["test_distillation[kd-deep-student]"]
    for search in ("test_darts", "test_random_search", "test_regularized_evolution"):
        assert set(labels[search]["omitted"].split("+")) == {
            "sep_conv_5x5",
            "dil_conv_5x5",
            "cutout",
            "drop-path",
            "auxiliary-head",
        }
    assert labels["test_darts"]["variant"] == "first-order"
    assert labels["test_channel_pruning[taylor]"]["schedule"] == "one-shot"
    assert labels["test_channel_pruning[taylor]"]["base"] == base
    assert labels["test_channel_pruning[taylor]"]["model"] == f"{base}-pruned50"
    assert labels["test_channel_pruning[taylor-aggressive]"]["model"] == f"{base}-pruned75"
    assert labels["test_distillation[kd-deep-student]"]["model"] == deep_student
    methods = [(entry["family"], entry["method"], entry["model"]) for entry in labels.values()]
    assert len(methods) == len(set(methods)), "each method and model is one test"
    for family in ("pruning", "distillation"):
        models = {entry["model"] for entry in labels.values() if entry["family"] == family}
        assert len(models) == 2, f"{family} holds models of two sizes: {models}"


def test_paper_scale_without_cifar10_skips_naming_the_expected_files(pytester, tmp_path):
    missing = tmp_path / "no-cifar-here"

    result = pytester.runpytest_subprocess(
        str(BENCHMARKS / "test_baseline.py"),
        "--energy-scale",
        "paper",
        "--energy-data",
        str(missing),
        "-rs",
    )

    result.assert_outcomes(skipped=1)
    output = result.stdout.str()
    assert str(missing) in output
    assert "cifar-10-batches-py/data_batch_1..5, test_batch and batches.meta" in output
    assert "never downloads" in output
    assert not missing.exists()


def error_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stderr.lines + result.stdout.lines if "ERROR" in line]


def test_an_unknown_scale_is_refused_naming_the_flag(pytester):
    result = pytester.runpytest_subprocess(
        str(BENCHMARKS / "test_baseline.py"), "--energy-scale", "huge"
    )

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stderr.str()
    assert "--energy-scale: invalid choice: 'huge'" in output
    assert "Traceback" not in output + result.stdout.str()


def test_a_dry_run_with_the_data_missing_is_one_line_naming_the_flag(pytester, tmp_path):
    missing = tmp_path / "nowhere"

    result = pytester.runpytest_subprocess(
        str(BENCHMARKS / "test_baseline.py"),
        "--energy-scale",
        "paper",
        "--energy-dry-run",
        "--energy-data",
        str(missing),
    )

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = error_lines(result)
    assert f"--energy-dry-run --energy-data {missing}" in line
    assert "cifar-10-batches-py/data_batch_1" in line
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


@pytest.mark.parametrize("dry_run", [False, True], ids=["paper", "paper-dry-run"])
def test_a_corrupt_cifar_batch_file_is_one_line_naming_the_file(pytester, tmp_path, dry_run):
    write_cifar10(tmp_path, images_per_batch=4, seed=0)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    before = {path.name: path.read_bytes() for path in batch.parent.iterdir()}

    result = pytester.runpytest_subprocess(
        str(BENCHMARKS / "test_baseline.py"),
        "--energy-scale",
        "paper",
        "--energy-data",
        str(tmp_path),
        *(["--energy-dry-run"] if dry_run else []),
    )

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = error_lines(result)
    assert f"--energy-data {tmp_path}: cifar-10-batches-py/data_batch_3 does not unpickle" in line
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert {path.name: path.read_bytes() for path in batch.parent.iterdir()} == before


def test_a_dry_run_cuts_every_schedule_but_keeps_the_paper_models():
    dry = dry_run(PAPER)

    assert (dry.base_depth, dry.student_depth, dry.search.retrain_cells) == (56, 20, 20)
    assert dry.base_epochs == dry.distill_epochs == dry.finetune_epochs == 1
    assert dry.search.search_epochs == dry.search.retrain_epochs == 1
    assert dry.search.random_trials == 2 and dry.zeroq_steps == 20
    search = dry.search
    assert (search.evolution_population, search.evolution_sample, search.evolution_cycles) == (
        2,
        2,
        1,
    )
    assert dry.synthetic_train_count == 1024 and dry.dry_run
    assert dry_run(SMOKE).base_epochs == 1 and dry_run(SMOKE).prune_ratio == SMOKE.prune_ratio


def test_a_dry_run_labels_its_results_and_uses_synthetic_data_without_a_data_set(pytester):
    labels = collected_labels(pytester, "--energy-scale", "paper", "--energy-dry-run")

    baseline = labels["test_uncompressed_base_model"]
    assert baseline["model"] == "resnet56" and baseline["dataset"] == "synthetic"
    assert all(entry["dry_run"] == "yes" for entry in labels.values())


def test_the_distributed_timeout_is_an_option_with_a_checked_value(pytester):
    result = pytester.runpytest_subprocess(
        str(BENCHMARKS / "test_baseline.py"), "--energy-distributed-timeout", "-5"
    )

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--energy-distributed-timeout: expected a positive number of seconds, got '-5'" in (
        result.stderr.str()
    )
