"""A pytest plugin the GPU check loads with ``-p scripts.gpu_check_pytest``.

- With ``GPU_CHECK_LABELS_FILE`` set, it writes every collected lifecycle test's node id and
  labels, in collection order, to that file (the check picks one test per family from it).
- With ``GPU_CHECK_FALLBACK_DRY_RUN=1`` (only where the benchmark has no ``--energy-dry-run``
  yet), it stands in for that option: the paper scale's models on the smoke scale's short
  schedule and synthetic CIFAR-shaped data instead of the CIFAR-10 files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

SCHEDULE_FIELDS = (
    "base_epochs",
    "finetune_epochs",
    "qat_epochs",
    "distill_epochs",
    "calibration_samples",
    "zeroq_samples",
    "zeroq_steps",
    "crd_negatives",
    "synthetic_train_count",
    "synthetic_test_count",
)
"""What the stand-in takes from the smoke scale: its schedule and synthetic data set size."""
SEARCH_SCHEDULE_FIELDS = (
    "search_samples",
    "search_epochs",
    "retrain_epochs",
    "random_trials",
    "random_trial_epochs",
)


def _replace_known(instance: Any, changes: dict[str, Any]) -> Any:
    names = {field.name for field in dataclasses.fields(instance)}
    return dataclasses.replace(instance, **{k: v for k, v in changes.items() if k in names})


def dry_run_scale(paper: Any, smoke: Any) -> Any:
    """The paper scale's models and settings on the smoke scale's schedule and synthetic data.

    Enough training for the benchmark's accuracy checks to pass (the smoke suite's), at a
    cost of seconds per phase on a GPU.
    """
    scale = _replace_known(paper, {name: getattr(smoke, name) for name in SCHEDULE_FIELDS})
    search = {name: getattr(smoke.search, name) for name in SEARCH_SCHEDULE_FIELDS}
    return dataclasses.replace(scale, search=_replace_known(paper.search, search))


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("GPU_CHECK_FALLBACK_DRY_RUN") != "1":
        return
    from benchmarks.lowcarbon import scales
    from benchmarks.lowcarbon.data import synthetic_bundle

    smoke, paper = scales.SCALES["smoke"], scales.SCALES["paper"]
    if os.environ.get("GPU_CHECK_DEVICE") == "cpu":
        # A rehearsal on a CPU checks the plumbing only: the smoke scale under the paper's name.
        paper = dataclasses.replace(smoke, name="paper")
    scale = dry_run_scale(paper, smoke)
    scales.SCALES["paper"] = scale
    conftest = sys.modules.get("benchmarks.conftest")
    if conftest is None:
        raise pytest.UsageError("gpu-check: benchmarks/conftest.py is not loaded: pass benchmarks/")

    def synthetic_cifar10(root: Any, deployment_batch_size: int, device: Any) -> Any:
        return synthetic_bundle(
            scale.synthetic_train_count,
            scale.synthetic_test_count,
            deployment_batch_size,
            scale.seed,
            device,
        )

    conftest.load_cifar10 = synthetic_cifar10


def pytest_collection_finish(session: pytest.Session) -> None:
    path = os.environ.get("GPU_CHECK_LABELS_FILE")
    if not path:
        return
    tests = []
    for item in session.items:
        marker = item.get_closest_marker("lifecycle")
        if marker is not None:
            labels = {key: str(value) for key, value in marker.kwargs.items()}
            tests.append([item.nodeid, labels])
    Path(path).write_text(json.dumps(tests, indent=1), encoding="utf-8")
