"""The low-carbon CV benchmark's shared pieces: scale, data and the base model.

The base model is trained once per run inside `energy_session.measure("base-training")`; every
method that starts from it charges that energy to its own TEC (Li et al. 2021: a compressed
model's life includes the training of the model it was compressed from).

Lifecycle labels may name models by role, filled in for the scale at collection time:
`{base}`, `{pruned}` and `{pruned_aggressive}` (the base model pruned at the scale's two
ratios), `{student}`, `{deep_student}`, `{search_network}`, `{dataset}` (e.g. `model="{base}"`
reads `resnet8` at smoke scale and `resnet56` at paper scale). Every benchmark test also gets
`scale=`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from benchmarks.lowcarbon.data import (
    DataBundle,
    DatasetCorrupt,
    DatasetUnavailable,
    check_cifar10_files,
    cifar10_unavailable_message,
    load_cifar10,
    synthetic_bundle,
)
from benchmarks.lowcarbon.models import CifarResNet, resnet_name
from benchmarks.lowcarbon.scales import SCALES, Scale, dry_run
from benchmarks.lowcarbon.training import seed_everything, train_classifier
from pytest_energy.session import Charge, EnergySession

BENCHMARK_DIRECTORY = Path(__file__).parent
_STARTED = pytest.StashKey[tuple[float, os.times_result]]()
_WORKERS = pytest.StashKey[list[tuple[float, int]]]()


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return seconds


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("energy-benchmark", "low-carbon CV benchmark (benchmarks/)")
    group.addoption(
        "--energy-scale",
        choices=sorted(SCALES),
        default="smoke",
        help="smoke (default): seeded synthetic 32×32 data and tiny models, minutes on a CPU; "
        "paper: CIFAR-10 from --energy-data, ResNet-56 base / ResNet-20 student, the papers' "
        "epochs, for a GPU",
    )
    group.addoption(
        "--energy-data",
        metavar="DIR",
        default=None,
        help="folder holding cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta) "
        "for --energy-scale paper; nothing is downloaded, a missing folder skips those tests",
    )
    group.addoption(
        "--energy-dry-run",
        action="store_true",
        default=False,
        help="the scale's models and code path with every schedule cut to one epoch, on "
        "synthetic CIFAR-shaped data unless --energy-data is given (then its files must be "
        "there); checks the paper-scale path on a GPU in minutes; results labelled dry_run=yes",
    )
    group.addoption(
        "--energy-distributed-timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=None,
        help="longest a data-parallel training run may take (default: 1800 s at smoke "
        "scale, 48 h at paper scale)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Refuse data that cannot work before any test runs: one line naming the flag or file."""
    config.stash[_STARTED] = (time.perf_counter(), os.times())
    scale = _scale_of(config)
    root = config.getoption("--energy-data")
    if scale.name == "smoke" or root is None:
        return
    missing = cifar10_unavailable_message(root)
    if missing is not None:
        if scale.dry_run:
            raise pytest.UsageError(f"--energy-dry-run --energy-data {root}: {missing}")
        return
    try:
        check_cifar10_files(root)
    except DatasetCorrupt as corrupt:
        raise pytest.UsageError(f"--energy-data {root}: {corrupt}") from None


def _cpu_seconds_since(started_times: os.times_result) -> tuple[float, float]:
    """CPU seconds of this process and of its finished child processes since `started_times`."""
    now = os.times()
    own = (now.user + now.system) - (started_times.user + started_times.system)
    children = (now.children_user + now.children_system) - (
        started_times.children_user + started_times.children_system
    )
    return own, children


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a pytest-xdist worker, hand its CPU seconds and torch threads to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    started = session.config.stash.get(_STARTED, None)
    if workeroutput is None or started is None:
        return
    own, children = _cpu_seconds_since(started[1])
    workeroutput["benchmark_cpu_seconds"] = own + children
    workeroutput["benchmark_torch_threads"] = torch.get_num_threads()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """On the pytest-xdist controller, collect what each worker handed over."""
    output = getattr(node, "workeroutput", {})
    if "benchmark_cpu_seconds" in output:
        config = node.config  # type: ignore[attr-defined]
        config.stash.setdefault(_WORKERS, []).append(
            (output["benchmark_cpu_seconds"], output["benchmark_torch_threads"])
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The suite's wall time and CPU time (this process, its finished child processes, e.g.
    data-parallel ranks, and pytest-xdist workers): on a shared machine wall time alone
    overstates the work, and with workers it understates it."""
    config = terminalreporter.config
    started = config.stash.get(_STARTED, None)
    if started is None:
        return
    started_seconds, started_times = started
    own, children = _cpu_seconds_since(started_times)
    wall = time.perf_counter() - started_seconds
    scale = _scale_of(config)
    workers = config.stash.get(_WORKERS, [])
    if workers:
        worker_seconds = sum(seconds for seconds, _ in workers)
        threads = max(threads for _, threads in workers)
        total = own + worker_seconds
        where = f"{own:.1f} s this process, {worker_seconds:.1f} s in {len(workers)} workers"
    else:
        threads = torch.get_num_threads()
        total = own + children
        where = f"{own:.1f} s this process, {children:.1f} s child processes"
    terminalreporter.write_line(
        f"low-carbon benchmark: {wall:.1f} s wall, {total:.1f} s CPU ({where}), "
        f"{threads} torch thread(s)"
        + (" per worker" if workers else "")
        + f", scale {scale.name}"
        + (" (dry run)" if scale.dry_run else "")
    )


def _scale_of(config: pytest.Config) -> Scale:
    """The run's scale: `--energy-scale`, cut short by `--energy-dry-run`, with the
    distributed timeout `--energy-distributed-timeout` when given."""
    scale = SCALES[config.getoption("--energy-scale")]
    if config.getoption("--energy-dry-run"):
        scale = dry_run(scale)
    timeout_seconds = config.getoption("--energy-distributed-timeout")
    if timeout_seconds is not None:
        scale = dataclasses.replace(scale, distributed_timeout_seconds=timeout_seconds)
    return scale


def scale_labels(scale: Scale) -> dict[str, str]:
    """What the role placeholders of lifecycle labels stand for at `scale`."""
    search = scale.search
    base = resnet_name(scale.base_depth, scale.base_width)
    return {
        "base": base,
        "pruned": pruned_name(base, scale.prune_ratio),
        "pruned_aggressive": pruned_name(base, scale.aggressive_prune_ratio),
        "student": resnet_name(scale.student_depth, scale.student_width),
        "deep_student": resnet_name(scale.deep_student_depth, scale.student_width),
        "search_network": f"darts-cells{search.retrain_cells}-c{search.retrain_channels}",
        "dataset": "synthetic" if scale.name == "smoke" else "cifar10",
    }


def pruned_name(base: str, channel_ratio: float) -> str:
    """The model left when `channel_ratio` of `base`'s channels are pruned: `resnet8-pruned75`."""
    return f"{base}-pruned{round(100 * channel_ratio)}"


def _dataset_label(config: pytest.Config, scale: Scale) -> str:
    if scale.dry_run and config.getoption("--energy-data") is None:
        return "synthetic"
    return scale_labels(scale)["dataset"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    scale = _scale_of(config)
    labels = {**scale_labels(scale), "dataset": _dataset_label(config, scale)}
    for item in items:
        marker = item.get_closest_marker("lifecycle")
        if marker is None or not item.path.is_relative_to(BENCHMARK_DIRECTORY):
            continue
        try:
            resolved = {
                key: value.format_map(labels) if isinstance(value, str) else value
                for key, value in marker.kwargs.items()
            }
        except KeyError as unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: lifecycle label placeholder {unknown} is not one of "
                f"{', '.join('{' + name + '}' for name in labels)}"
            ) from None
        resolved.setdefault("scale", scale.name)
        if scale.dry_run:
            resolved.setdefault("dry_run", "yes")
        item.add_marker(pytest.mark.lifecycle(*marker.args, **resolved), append=False)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    """One intra-op thread, so runs compare across machines with other core counts.

    With more, idle OpenMP workers spin between operators while the machine is busy, and the
    cputime meter charges that spinning: A/A reruns then move by far more than the tolerance
    (``python -m benchmarks.false_alarms --threads 0`` shows it).
    """
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def scale(request: pytest.FixtureRequest) -> Scale:
    """The run's scale (`--energy-scale`)."""
    return _scale_of(request.config)


@pytest.fixture(scope="session")
def data(request: pytest.FixtureRequest, scale: Scale) -> DataBundle:
    """Train/test data and the deployment batch: synthetic at smoke scale and in a dry run
    without --energy-data, CIFAR-10 otherwise (skips every test that needs it when the files
    are not there; a dry run does not check the files' MD5, so small files in the format do)."""
    device = scale.device()
    root = request.config.getoption("--energy-data")
    if scale.name == "smoke" or (scale.dry_run and root is None):
        return synthetic_bundle(
            scale.synthetic_train_count,
            scale.synthetic_test_count,
            scale.deployment_batch_size,
            scale.seed,
            device,
        )
    try:
        return load_cifar10(
            root, scale.deployment_batch_size, device, verify_checksums=not scale.dry_run
        )
    except DatasetUnavailable as unavailable:
        pytest.skip(str(unavailable))


@dataclass(frozen=True)
class BaseModel:
    """The trained base model and the energy its training took."""

    model: CifarResNet
    training: Charge

    def copy(self) -> CifarResNet:
        """A deep copy to compress; the shared model stays as trained."""
        return copy.deepcopy(self.model)


@pytest.fixture(scope="session")
def base_model(energy_session: EnergySession, scale: Scale, data: DataBundle) -> BaseModel:
    """The base model, trained once per run; charge `.training` to each method using it."""
    seed_everything(scale.seed)
    model = CifarResNet(scale.base_depth, scale.base_width, data.num_classes).to(data.device)
    with energy_session.measure("base-training") as training:
        train_classifier(
            model, data.train, scale.base_epochs, scale.settings, scale.seed, data.augment
        )
    return BaseModel(model=model, training=training)
