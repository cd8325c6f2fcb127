"""A pytest plugin the GPU check loads with ``-p scripts.gpu_check_pytest``.

- With ``GPU_CHECK_LABELS_FILE`` set, it writes every collected lifecycle test's node id and
  labels, in collection order, to that file (the check picks one test per family from it).
- With ``GPU_CHECK_FALLBACK_DRY_RUN=1`` (only where the benchmark has no ``--energy-dry-run``
  yet), it stands in for that option: the paper scale with one epoch per training phase, on
  synthetic CIFAR-shaped data instead of the CIFAR-10 files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

FALLBACK_TRAIN_IMAGES = 2560
FALLBACK_TEST_IMAGES = 1000
FALLBACK_SCALE_CHANGES: dict[str, Any] = {
    "base_epochs": 1,
    "finetune_epochs": 1,
    "qat_epochs": 1,
    "distill_epochs": 1,
    "calibration_samples": 256,
    "zeroq_steps": 20,
    "crd_negatives": 1024,
    "synthetic_train_count": FALLBACK_TRAIN_IMAGES,
    "synthetic_test_count": FALLBACK_TEST_IMAGES,
}
FALLBACK_SEARCH_CHANGES: dict[str, Any] = {
    "search_samples": 1280,
    "search_epochs": 1,
    "retrain_epochs": 1,
    "random_trials": 2,
    "random_trial_epochs": 1,
}


def _replace_known(instance: Any, changes: dict[str, Any]) -> Any:
    names = {field.name for field in dataclasses.fields(instance)}
    return dataclasses.replace(instance, **{k: v for k, v in changes.items() if k in names})


def dry_run_scale(paper: Any) -> Any:
    """The paper scale with one epoch per phase and a small synthetic data set."""
    scale = _replace_known(paper, FALLBACK_SCALE_CHANGES)
    if hasattr(scale, "search"):
        scale = dataclasses.replace(
            scale, search=_replace_known(scale.search, FALLBACK_SEARCH_CHANGES)
        )
    return scale


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("GPU_CHECK_FALLBACK_DRY_RUN") != "1":
        return
    from benchmarks.lowcarbon import scales
    from benchmarks.lowcarbon.data import synthetic_bundle

    scale = dry_run_scale(scales.SCALES["paper"])
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
