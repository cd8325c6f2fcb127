"""A stand-in ``pynvml`` for rehearsing ``make gpu-check`` on a machine without a GPU.

Put this folder first on ``PYTHONPATH`` (and set ``GPU_CHECK_DEVICE=cpu``): NVML then sees one
Hopper GPU drawing a known power, 100 W with a 20 W ripple of period 0.7 s, whose energy
counter (mJ) holds the exact integral of that power and updates every 0.1 s, as DESIGN.md
describes the real one. Nothing here measures anything.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_DEVICE_ARCH_VOLTA = 5
NVML_DEVICE_ARCH_HOPPER = 9
NVML_DEVICE_ARCH_UNKNOWN = 0xFFFFFFFF
NVML_FI_DEV_POWER_INSTANT = 186
NVML_VALUE_TYPE_UNSIGNED_INT = 1

BASE_WATTS = 100.0
RIPPLE_WATTS = 20.0
RIPPLE_PERIOD_SECONDS = 0.7
COUNTER_UPDATE_SECONDS = 0.1
_EPOCH = time.perf_counter()


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"fake NVML error {value}")
        self.value = value


def watts_at(seconds: float) -> float:
    """The stand-in GPU's power at ``seconds`` on ``time.perf_counter``'s clock."""
    phase = 2 * math.pi * (seconds - _EPOCH) / RIPPLE_PERIOD_SECONDS
    return BASE_WATTS + RIPPLE_WATTS * math.sin(phase)


def joules_until(seconds: float) -> float:
    """The exact integral of ``watts_at`` from the epoch to ``seconds``."""
    elapsed = seconds - _EPOCH
    omega = 2 * math.pi / RIPPLE_PERIOD_SECONDS
    return BASE_WATTS * elapsed + RIPPLE_WATTS * (1 - math.cos(omega * elapsed)) / omega


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return 1


def nvmlDeviceGetHandleByIndex(index: int) -> str:
    return f"handle-{index}"


def nvmlDeviceGetUUID(handle: str) -> str:
    return "GPU-00000000-fake-0000-0000-000000000000"


def nvmlDeviceGetName(handle: str) -> str:
    return "Stand-in GPU (tests/gpu_check_fake)"


def nvmlDeviceGetArchitecture(handle: str) -> int:
    return NVML_DEVICE_ARCH_HOPPER


def nvmlDeviceGetTotalEnergyConsumption(handle: str) -> int:
    now = time.perf_counter()
    last_update = (
        _EPOCH + math.floor((now - _EPOCH) / COUNTER_UPDATE_SECONDS) * COUNTER_UPDATE_SECONDS
    )
    return int(1000 * joules_until(last_update))


def nvmlDeviceGetPowerUsage(handle: str) -> int:
    return int(1000 * watts_at(time.perf_counter()))


def nvmlDeviceGetFieldValues(handle: str, field_ids: list[int]) -> list[SimpleNamespace]:
    values = []
    for field_id in field_ids:
        supported = field_id == NVML_FI_DEV_POWER_INSTANT
        values.append(
            SimpleNamespace(
                fieldId=field_id,
                nvmlReturn=NVML_SUCCESS if supported else NVML_ERROR_NOT_SUPPORTED,
                valueType=NVML_VALUE_TYPE_UNSIGNED_INT,
                value=SimpleNamespace(uiVal=nvmlDeviceGetPowerUsage(handle) if supported else 0),
            )
        )
    return values


def nvmlDeviceGetEnforcedPowerLimit(handle: str) -> int:
    return 700_000


def nvmlSystemGetDriverVersion() -> str:
    return "0.0-fake"


def nvmlSystemGetCudaDriverVersion() -> int:
    return 13000


def nvmlSystemGetNVMLVersion() -> str:
    return "0.0-fake"
