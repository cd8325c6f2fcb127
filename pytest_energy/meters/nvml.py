"""The ``nvml`` meter: NVIDIA GPU energy through NVML (the ``pynvml`` module of nvidia-ml-py).

Volta and newer GPUs keep a total-energy counter in millijoules that the driver updates about
every 100 ms; the meter takes its delta over the window. Older GPUs, and any GPU whose counter
call is not supported, are measured by a background thread that polls power in milliwatts and
integrates it over the window with the trapezoidal rule.

Only the GPUs this process can see are measured: ``CUDA_VISIBLE_DEVICES`` is honoured the way
CUDA reads it (indices or ``GPU-<uuid>`` prefixes, parsing stops at the first entry it cannot
resolve, an empty value hides every GPU), and domains are named ``gpu:0``, ``gpu:1`` in CUDA's
visible order. Indices are taken in NVML's order (PCI bus order), which is CUDA's order when
``CUDA_DEVICE_ORDER=PCI_BUS_ID``; on a machine with mixed GPU models, set it or use UUIDs.

A GPU in MIG mode (Multi-Instance GPU) keeps one energy counter and one power reading for the
whole card, shared by every instance on it: NVML cannot measure one instance. The meter refuses
such a GPU, and a ``MIG-`` instance in ``CUDA_VISIBLE_DEVICES``, naming the GPU and the reason;
``NvmlMeter(whole_gpu_under_mig=True)`` measures the whole card knowingly and says so in every
reading's ``details["mig"]``.

When the process has already imported torch and initialised CUDA, every measured GPU is
synchronised at both window edges, so kernels queued inside the window are charged to it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from pytest_energy.errors import MeasurementError, MeterError, MeterUnavailable
from pytest_energy.meters.base import Meter, MeterKind, MeterScope, Reading

ENERGY_COUNTER = "energy-counter"
POWER_POLLING = "power-polling"

_NVML_ERROR_LIBRARY_NOT_FOUND = 12
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_NO_PERMISSION = 4
_NVML_DEVICE_ARCH_VOLTA = 5
_NVML_DEVICE_ARCH_UNKNOWN = 0xFFFFFFFF
_NVML_DEVICE_MIG_ENABLE = 1


def visible_nvml_indices(cuda_visible_devices: str | None, uuids: list[str]) -> list[int]:
    """NVML indices of the GPUs CUDA shows this process, in CUDA's order.

    ``uuids`` holds each NVML device's UUID (``GPU-...``) in NVML index order. ``None`` (the
    variable is unset) shows every GPU; otherwise each comma-separated entry is an index or a
    unique ``GPU-`` UUID prefix, and parsing stops at the first entry that names no GPU, names
    one twice, or is anything else (e.g. a ``MIG-`` instance), as CUDA does.
    """
    if cuda_visible_devices is None:
        return list(range(len(uuids)))
    lowered_uuids = [uuid.lower() for uuid in uuids]
    chosen: list[int] = []
    for raw_entry in cuda_visible_devices.split(","):
        entry = raw_entry.strip()
        if entry.isascii() and entry.isdigit():
            index = int(entry)
            if index >= len(uuids):
                break
        elif entry.lower().startswith("gpu-"):
            matches = [i for i, uuid in enumerate(lowered_uuids) if uuid.startswith(entry.lower())]
            if len(matches) != 1:
                break
            index = matches[0]
        else:
            break
        if index in chosen:
            break
        chosen.append(index)
    return chosen


def integrate_watts(samples: list[tuple[float, float]]) -> float:
    """Joules from ``(seconds, watts)`` samples in time order, by the trapezoidal rule."""
    return sum(
        (later_seconds - seconds) * (watts + later_watts) / 2
        for (seconds, watts), (later_seconds, later_watts) in itertools.pairwise(samples)
    )


@dataclass(frozen=True)
class NvmlGpu:
    """One visible GPU and how its energy is measured.

    Attributes:
        domain: domain name in a Reading, ``gpu:<CUDA index>``.
        nvml_index: the GPU's NVML index (all GPUs, PCI bus order).
        uuid: the GPU's UUID, ``GPU-...``.
        name: the GPU's marketing name, e.g. ``NVIDIA H100 80GB HBM3``.
        method: ``energy-counter`` or ``power-polling``.
        handle: the NVML device handle.
    """

    domain: str
    nvml_index: int
    uuid: str
    name: str
    method: str
    handle: Any


class _PowerPoller:
    """A daemon thread that samples power while a window is open, idle otherwise."""

    def __init__(self, read_watts: Callable[[], list[float]], interval_seconds: float) -> None:
        self._read_watts = read_watts
        self._interval_seconds = interval_seconds
        self._lock = threading.Lock()
        self._window_open = threading.Event()
        self._closing = threading.Event()
        self._samples: list[tuple[float, list[float]]] = []
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        """Take the first sample now and keep sampling until ``end()``."""
        first = (time.perf_counter(), self._read_watts())
        with self._lock:
            self._samples = [first]
            self._error = None
        self._window_open.set()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="pytest-energy-nvml-power", daemon=True
            )
            self._thread.start()

    def end(self) -> list[tuple[float, list[float]]]:
        """Stop sampling, take the last sample now and return every sample of the window."""
        self._window_open.clear()
        with self._lock:
            if self._error is not None:
                raise MeterError(f"nvml: polling power failed: {self._error}") from self._error
            self._samples.append((time.perf_counter(), self._read_watts()))
            samples, self._samples = self._samples, []
        return samples

    def close(self) -> None:
        """Stop the thread."""
        self._closing.set()
        self._window_open.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            self._window_open.wait()
            if self._closing.wait(self._interval_seconds):
                return
            with self._lock:
                if not self._window_open.is_set() or self._error is not None:
                    continue
                try:
                    self._samples.append((time.perf_counter(), self._read_watts()))
                except Exception as error:
                    self._error = error


def _synchronize_cuda(devices: list[int]) -> None:
    """Wait for work this process queued on CUDA devices, without touching any other device.

    Only devices where this process holds memory (or its current device) are synchronised:
    ``torch.cuda.synchronize(i)`` on any other GPU would create a CUDA context there, and under
    torchrun every rank would then take memory on every GPU.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    current = torch.cuda.current_device()
    for device in devices:
        if device == current or torch.cuda.memory_reserved(device) > 0:
            torch.cuda.synchronize(device)


class NvmlMeter(Meter):
    """Energy of every GPU visible to this process, from NVML.

    NVML is initialised once, in the constructor; ``close()`` shuts it down and stops the
    power-polling thread. Reading ``details``:

    - ``method``: domain → ``energy-counter`` or ``power-polling``;
    - ``gpus``: domain → ``{"name", "uuid", "nvml_index"}``;
    - ``power_samples``: domain → number of power samples integrated (power-polling GPUs only);
    - ``mig``: domain → what was measured on a MIG-mode GPU (only with ``whole_gpu_under_mig``).
    """

    name: ClassVar[str] = "nvml"
    kind: ClassVar[MeterKind] = "measured"
    min_window_seconds: ClassVar[float] = 1.0
    scope: ClassVar[MeterScope] = "device"

    def __init__(
        self,
        nvml: ModuleType | None = None,
        poll_interval_seconds: float = 0.02,
        whole_gpu_under_mig: bool = False,
    ) -> None:
        if poll_interval_seconds <= 0:
            raise ValueError(f"poll_interval_seconds must be positive, not {poll_interval_seconds}")
        self.whole_gpu_under_mig = whole_gpu_under_mig
        self.mig: dict[str, str] = {}
        self._nvml = _import_pynvml() if nvml is None else nvml
        self.poll_interval_seconds = poll_interval_seconds
        self._initialised = False
        self._poller: _PowerPoller | None = None
        self._window_open = False
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as error:
            raise MeterUnavailable(_init_failure_reason(self._nvml, error)) from None
        self._initialised = True
        try:
            self.gpus: tuple[NvmlGpu, ...] = tuple(self._discover_gpus())
        except BaseException:
            self.close()
            raise
        self._counter_gpus = [gpu for gpu in self.gpus if gpu.method == ENERGY_COUNTER]
        self._polled_gpus = [gpu for gpu in self.gpus if gpu.method == POWER_POLLING]
        self._cuda_indices = list(range(len(self.gpus)))
        self._start_millijoules: list[int] = []
        self._start_seconds = 0.0
        if self._polled_gpus:
            self._poller = _PowerPoller(self._read_polled_watts, poll_interval_seconds)

    @classmethod
    def unavailable_reason(cls, nvml: ModuleType | None = None, **options: Any) -> str | None:
        """Why NVML cannot measure a GPU here (``None`` when it can)."""
        try:
            meter = cls(nvml=nvml)
        except MeterUnavailable as error:
            return str(error)
        except Exception as error:
            return f"nvml: unexpected error initialising NVML: {error!r}"
        meter.close()
        return None

    def _discover_gpus(self) -> list[NvmlGpu]:
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            handles = [nvml.nvmlDeviceGetHandleByIndex(index) for index in range(count)]
            uuids = [_text(nvml.nvmlDeviceGetUUID(handle)) for handle in handles]
        except nvml.NVMLError as error:
            raise MeterUnavailable(f"nvml: listing GPUs failed: {error}") from None
        cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._refuse_mig_instances(cuda_visible_devices, handles)
        indices = visible_nvml_indices(cuda_visible_devices, uuids)
        if not indices:
            if count and cuda_visible_devices is not None:
                raise MeterUnavailable(
                    f"nvml: no NVIDIA GPU visible (CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} "
                    f"hides all {count})"
                )
            raise MeterUnavailable("nvml: no NVIDIA GPU visible")
        gpus = []
        for cuda_index, nvml_index in enumerate(indices):
            handle = handles[nvml_index]
            try:
                name = _text(nvml.nvmlDeviceGetName(handle))
            except nvml.NVMLError:
                name = "unknown"
            self._check_mig_mode(handle, f"gpu:{cuda_index}", name, nvml_index)
            gpus.append(
                NvmlGpu(
                    domain=f"gpu:{cuda_index}",
                    nvml_index=nvml_index,
                    uuid=uuids[nvml_index],
                    name=name,
                    method=self._choose_method(handle, f"gpu:{cuda_index}"),
                    handle=handle,
                )
            )
        return gpus

    def _mig_instance_uuids(self, handle: Any) -> list[str]:
        """UUIDs (``MIG-...``) of the MIG instances on one GPU; empty where NVML cannot say."""
        nvml = self._nvml
        try:
            slots = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        except (nvml.NVMLError, AttributeError):
            return []
        uuids = []
        for slot in range(slots):
            try:
                instance = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                uuids.append(_text(nvml.nvmlDeviceGetUUID(instance)))
            except nvml.NVMLError:
                continue  # an empty slot
        return uuids

    def _refuse_mig_instances(self, cuda_visible_devices: str | None, handles: list[Any]) -> None:
        """A ``MIG-`` entry in ``CUDA_VISIBLE_DEVICES`` cannot be measured: name its GPU."""
        entries = [entry.strip() for entry in (cuda_visible_devices or "").split(",")]
        instance = next((entry for entry in entries if entry.lower().startswith("mig-")), None)
        if instance is None:
            return
        where = ""
        for nvml_index, handle in enumerate(handles):
            if any(uuid.lower() == instance.lower() for uuid in self._mig_instance_uuids(handle)):
                try:
                    name = _text(self._nvml.nvmlDeviceGetName(handle))
                except self._nvml.NVMLError:
                    name = "unknown"
                where = f" on GPU {nvml_index} ({name})"
                break
        raise MeterUnavailable(
            f"nvml: CUDA_VISIBLE_DEVICES names MIG instance {instance}{where}; NVML reads energy "
            f"and power only for the whole GPU, shared by all its instances, so one instance "
            f"cannot be measured (use a whole GPU, or the cputime/counted meters)"
        )

    def _check_mig_mode(self, handle: Any, domain: str, name: str, nvml_index: int) -> None:
        """Refuse a GPU in MIG mode, or note that the whole card is measured when allowed."""
        nvml = self._nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except (nvml.NVMLError, AttributeError):
            return  # no MIG support on this GPU or in this pynvml: a whole GPU
        if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", _NVML_DEVICE_MIG_ENABLE):
            return
        instances = len(self._mig_instance_uuids(handle))
        if not self.whole_gpu_under_mig:
            raise MeterUnavailable(
                f"nvml: {domain} ({name}) is in MIG mode with {instances} instance(s): its energy "
                f"counter covers the whole GPU, so every instance's work would be charged to this "
                f"process; disable MIG (nvidia-smi -i {nvml_index} -mig 0) or measure the whole "
                f"card knowingly with NvmlMeter(whole_gpu_under_mig=True)"
            )
        self.mig[domain] = (
            f"MIG mode with {instances} instance(s): the whole GPU is measured, "
            f"the other instances' work included"
        )

    def _choose_method(self, handle: Any, domain: str) -> str:
        """The energy counter on Volta and newer where it answers, else power polling."""
        nvml = self._nvml
        volta = getattr(nvml, "NVML_DEVICE_ARCH_VOLTA", _NVML_DEVICE_ARCH_VOLTA)
        unknown = getattr(nvml, "NVML_DEVICE_ARCH_UNKNOWN", _NVML_DEVICE_ARCH_UNKNOWN)
        try:
            architecture = nvml.nvmlDeviceGetArchitecture(handle)
        except nvml.NVMLError:
            architecture = unknown
        if architecture == unknown or architecture >= volta:
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                return ENERGY_COUNTER
            except nvml.NVMLError:
                pass
        try:
            nvml.nvmlDeviceGetPowerUsage(handle)
        except nvml.NVMLError as error:
            raise MeterUnavailable(
                f"nvml: {domain} reports neither an energy counter nor power ({error})"
            ) from None
        return POWER_POLLING

    def _read_polled_watts(self) -> list[float]:
        return [self._nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000 for gpu in self._polled_gpus]

    def _read_millijoules(self) -> list[int]:
        nvml = self._nvml
        try:
            return [
                nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle) for gpu in self._counter_gpus
            ]
        except nvml.NVMLError as error:
            raise MeterError(f"nvml: reading the energy counter failed: {error}") from error

    def start(self) -> None:
        """Open a window: synchronise CUDA, read the energy counters, start polling power."""
        if not self._initialised:
            raise MeterError("nvml: start() on a closed meter")
        if self._window_open:
            raise MeasurementError("nvml: start() called while a window is already open")
        _synchronize_cuda(self._cuda_indices)
        self._start_seconds = time.perf_counter()
        self._start_millijoules = self._read_millijoules()
        if self._poller is not None:
            try:
                self._poller.begin()
            except self._nvml.NVMLError as error:
                raise MeterError(f"nvml: reading power failed: {error}") from error
        self._window_open = True

    def stop(self) -> Reading:
        """Close the window: synchronise CUDA, read the counters, integrate polled power."""
        if not self._window_open:
            raise MeasurementError("nvml: stop() called without start()")
        self._window_open = False
        _synchronize_cuda(self._cuda_indices)
        end_millijoules = self._read_millijoules()
        samples: list[tuple[float, list[float]]] = []
        if self._poller is not None:
            try:
                samples = self._poller.end()
            except self._nvml.NVMLError as error:
                raise MeterError(f"nvml: reading power failed: {error}") from error
        seconds = time.perf_counter() - self._start_seconds

        joules_by_domain: dict[str, float] = {}
        for gpu, start, end in zip(
            self._counter_gpus, self._start_millijoules, end_millijoules, strict=True
        ):
            if end < start:
                raise MeterError(
                    f"nvml: the energy counter of {gpu.domain} went backwards "
                    f"({start} mJ to {end} mJ); was the driver reloaded or the GPU reset?"
                )
            joules_by_domain[gpu.domain] = (end - start) / 1000
        for position, gpu in enumerate(self._polled_gpus):
            joules_by_domain[gpu.domain] = integrate_watts(
                [(sample_seconds, watts[position]) for sample_seconds, watts in samples]
            )
        joules_by_domain = {gpu.domain: joules_by_domain[gpu.domain] for gpu in self.gpus}
        return Reading(
            meter=self.name,
            kind=self.kind,
            seconds=seconds,
            joules_by_domain=joules_by_domain,
            details={
                "method": {gpu.domain: gpu.method for gpu in self.gpus},
                "gpus": {
                    gpu.domain: {"name": gpu.name, "uuid": gpu.uuid, "nvml_index": gpu.nvml_index}
                    for gpu in self.gpus
                },
                "power_samples": {gpu.domain: len(samples) for gpu in self._polled_gpus},
                **({"mig": dict(self.mig)} if self.mig else {}),
            },
        )

    def describe(self) -> dict[str, Any]:
        """Name, kind, and each visible GPU with how it is measured."""
        return {
            **super().describe(),
            "gpus": {
                gpu.domain: {
                    "name": gpu.name,
                    "uuid": gpu.uuid,
                    "nvml_index": gpu.nvml_index,
                    "method": gpu.method,
                }
                for gpu in self.gpus
            },
            "poll_interval_seconds": self.poll_interval_seconds,
            **({"mig": dict(self.mig)} if self.mig else {}),
        }

    def close(self) -> None:
        """Stop the power-polling thread and shut NVML down; safe to call twice."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.close()
        self._window_open = False
        if self._initialised:
            self._initialised = False
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _import_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError:
        raise MeterUnavailable(
            "nvml: the pynvml module is missing (pip install nvidia-ml-py)"
        ) from None
    return pynvml


def _init_failure_reason(nvml: ModuleType, error: BaseException) -> str:
    code = getattr(error, "value", None)
    if code == getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", _NVML_ERROR_LIBRARY_NOT_FOUND):
        return "nvml: NVML library not found (no NVIDIA driver)"
    if code == getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", _NVML_ERROR_DRIVER_NOT_LOADED):
        return "nvml: NVIDIA driver not loaded (no NVIDIA GPU, or the driver is not running)"
    if code == getattr(nvml, "NVML_ERROR_NO_PERMISSION", _NVML_ERROR_NO_PERMISSION):
        return "nvml: no permission to initialise NVML"
    return f"nvml: initialising NVML failed: {error}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
