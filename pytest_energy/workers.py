"""pytest-xdist workers and energy meters: one GPU per worker, and no shared meter unnoticed.

Under ``pytest -n N`` several tests run at once, one per worker process. A per-process meter
(cputime, counted) still sees only its own test; a meter that reads the whole machine (rapl)
or every visible GPU (nvml) would also count the other workers' tests. So:

- ``--energy-gpu-per-worker`` gives worker ``gwK`` the K-th visible GPU alone, by setting its
  ``CUDA_VISIBLE_DEVICES`` before CUDA starts: its nvml reading is its own test's.
- Otherwise a host- or device-wide meter under 2+ workers is refused with the reason, unless
  ``--energy-allow-shared-meters`` accepts the overlap (with a warning).

The controller merges every worker's records into one results file and one baseline, as a
serial run gives: each test's record travels on its report.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_energy.errors import ConfigError
from pytest_energy.meters.base import Meter, MeterScope

WORKER_ID_VARIABLE = "PYTEST_XDIST_WORKER"
WORKER_COUNT_VARIABLE = "PYTEST_XDIST_WORKER_COUNT"
GPU_PER_WORKER_OPTION = "--energy-gpu-per-worker"
ALLOW_SHARED_OPTION = "--energy-allow-shared-meters"

_WORKER_ID = re.compile(r"gw(\d+)")

_SHARED_BECAUSE = {
    "host": "reads the whole machine (every CPU package and DRAM)",
    "device": "reads every GPU the workers can see",
}


def worker_index(worker_id: str) -> int:
    """The number in an xdist worker id: ``gw0`` → 0, ``gw12`` → 12."""
    match = _WORKER_ID.fullmatch(worker_id.strip())
    if match is None:
        raise ConfigError(
            f"{GPU_PER_WORKER_OPTION}: cannot read a worker number from the pytest-xdist worker "
            f"id {worker_id!r} (expected gw0, gw1, ...)"
        )
    return int(match.group(1))


def visible_gpus(cuda_visible_devices: str | None, gpu_count: int) -> list[str]:
    """The GPUs workers can be given, as ``CUDA_VISIBLE_DEVICES`` entries.

    The entries of ``CUDA_VISIBLE_DEVICES`` when it is set (indices, ``GPU-`` UUIDs or ``MIG-``
    instances, kept as written), else ``0 .. gpu_count-1``.
    """
    if cuda_visible_devices is not None:
        return [entry.strip() for entry in cuda_visible_devices.split(",") if entry.strip()]
    return [str(index) for index in range(gpu_count)]


def worker_gpu(worker_id: str, worker_count: int, gpus: Sequence[str]) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value of worker ``worker_id``: its own GPU, never shared."""
    check_gpus_for_workers(worker_count, gpus)
    index = worker_index(worker_id)
    if index >= len(gpus):
        raise ConfigError(
            f"{GPU_PER_WORKER_OPTION}: worker {worker_id} has no GPU of its own: "
            f"{len(gpus)} visible ({', '.join(gpus)})"
        )
    return gpus[index]


def check_gpus_for_workers(worker_count: int, gpus: Sequence[str], why: str = "") -> None:
    """Refuse when there are more workers than GPUs: two workers would share (and mix) a GPU."""
    if not gpus:
        raise ConfigError(
            f"{GPU_PER_WORKER_OPTION}: no GPU to give the workers{f' ({why})' if why else ''}"
        )
    if worker_count > len(gpus):
        raise ConfigError(
            f"{GPU_PER_WORKER_OPTION}: {worker_count} pytest-xdist workers but {len(gpus)} GPU"
            f"{'s' if len(gpus) != 1 else ''} visible ({', '.join(gpus)}); run with "
            f"-n {len(gpus)} or fewer so each worker has a GPU of its own"
        )


def nvml_gpu_count() -> tuple[int, str]:
    """Number of NVIDIA GPUs on the machine from NVML (which, unlike CUDA, leaves
    ``CUDA_VISIBLE_DEVICES`` free to change), and why it is 0 when it is."""
    try:
        import pynvml
    except ImportError:
        return 0, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as error:
        return 0, f"NVML cannot start: {error}"
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception as error:
        return 0, f"NVML cannot count GPUs: {error}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return count, "" if count else "NVML finds no GPU"


def _machine_gpus() -> tuple[list[str], str]:
    cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cuda_visible_devices is not None:
        gpus = visible_gpus(cuda_visible_devices, 0)
        return gpus, "" if gpus else f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}"
    count, why = nvml_gpu_count()
    return visible_gpus(None, count), why


def xdist_worker_id(config: Any) -> str | None:
    """This process's xdist worker id (``gw0``...), or None on the controller or without xdist."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return str(workerinput.get("workerid"))
    return None


def xdist_worker_count(config: Any) -> int:
    """How many xdist workers run the tests (0 without xdist), seen from any process."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput.get("workercount") or os.environ.get(WORKER_COUNT_VARIABLE, 1))
    option = config.option
    if getattr(option, "dist", "no") == "no":
        return 0
    numprocesses = getattr(option, "numprocesses", None)
    if isinstance(numprocesses, int) and numprocesses > 0:
        return numprocesses
    total = 0
    for spec in getattr(option, "tx", None) or []:
        count, star, _ = str(spec).partition("*")
        total += int(count) if star and count.isdigit() else 1
    return total


def pin_worker_gpu(config: Any) -> str | None:
    """With ``--energy-gpu-per-worker``: on the controller, check there is a GPU per worker; on
    a worker, set ``CUDA_VISIBLE_DEVICES`` to its own GPU. Returns the value set, if any.

    Runs in ``pytest_configure``, before any meter looks at GPUs; raises ConfigError when CUDA
    was already started in this process (a conftest or plugin used it at import).
    """
    if not config.getoption(GPU_PER_WORKER_OPTION):
        return None
    worker_count = xdist_worker_count(config)
    worker_id = xdist_worker_id(config)
    if worker_count == 0:
        return None
    gpus, why = _machine_gpus()
    if worker_id is None:
        check_gpus_for_workers(worker_count, gpus, why)
        return None
    gpu = worker_gpu(worker_id, worker_count, gpus)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise ConfigError(
            f"{GPU_PER_WORKER_OPTION}: CUDA had started in worker {worker_id} before "
            f"pytest-energy could give it GPU {gpu}; do not touch CUDA when conftest.py or a "
            f"plugin is imported (create tensors in fixtures instead)"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def shared_meters(
    scopes: Mapping[str, MeterScope], worker_count: int, gpu_per_worker: bool
) -> dict[str, MeterScope]:
    """The meters that would count other workers' tests too: name → scope.

    ``scopes``: meter name → scope. Host-wide meters are shared by the workers of one machine;
    device-wide meters are, unless each worker has its own GPU. Nothing is shared by 0-1 worker.
    """
    if worker_count < 2:
        return {}
    return {
        name: scope
        for name, scope in scopes.items()
        if scope == "host" or (scope == "device" and not gpu_per_worker)
    }


def shared_meter_message(
    shared: Mapping[str, MeterScope], worker_count: int, gpu_per_worker: bool, allowed: bool
) -> str:
    """Why shared meters are refused (or, when ``allowed``, kept) and what to do instead."""
    reasons = "; ".join(f"{name} {_SHARED_BECAUSE[scope]}" for name, scope in shared.items())
    what = (
        f"--energy under pytest-xdist ({worker_count} workers): {reasons}, so each worker's "
        f"readings include the other workers' tests"
    )
    if allowed:
        return f"{what} (kept because of {ALLOW_SHARED_OPTION})"
    if gpu_per_worker:
        ways = (
            f"{GPU_PER_WORKER_OPTION} splits the GPUs between workers, not the machine: keep to "
            f"per-worker meters (--energy-meter nvml,counted)"
        )
    else:
        ways = (
            f"Either give each worker its own GPU with {GPU_PER_WORKER_OPTION} and keep to "
            f"per-worker meters (--energy-meter nvml,counted); measure per process only "
            f"(--energy-meter cputime,counted)"
        )
    return f"{what}. {ways}; accept the overlap with {ALLOW_SHARED_OPTION}; or run without -n."


def check_shared_meters(config: Any, meters: Sequence[Meter]) -> str | None:
    """On the xdist controller: raise ConfigError if ``meters`` would be shared by workers;
    with ``--energy-allow-shared-meters`` return the warning to show instead."""
    if xdist_worker_id(config) is not None:
        return None
    worker_count = xdist_worker_count(config)
    gpu_per_worker = bool(config.getoption(GPU_PER_WORKER_OPTION))
    scopes = {meter.name: getattr(meter, "scope", "process") for meter in meters}
    shared = shared_meters(scopes, worker_count, gpu_per_worker)
    if not shared:
        return None
    allowed = bool(config.getoption(ALLOW_SHARED_OPTION))
    message = shared_meter_message(shared, worker_count, gpu_per_worker, allowed)
    if not allowed:
        raise ConfigError(message)
    return message
