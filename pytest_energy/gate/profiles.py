"""Baseline profiles: which meter on which hardware a baseline belongs to.

A reading is only comparable with one taken by the same meter on the same hardware, so
baselines are kept per *profile*: the meter, plus for ``measured`` and ``estimated`` meters a
hardware fingerprint:

- CPU meters (``cputime``, ``rapl``): CPU model and hardware-thread count;
- ``nvml``: each visible GPU's name and power limit (watts), and the driver's major version
  (NVML is queried for this only when the nvml meter is in use).

``counted`` figures do not depend on the machine: its profile is just ``counted``.

The profile name is the baseline's file name, readable and filesystem-safe, e.g.
``cputime-amd-epyc-7b13-2t``, ``nvml-nvidia-h100-80gb-hbm3-drv550-700w``, ``counted``.
Two machines whose names would collide (a long name is cut) differ in the fingerprint stored
inside the file, which the loader checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pytest_energy.meters.base import Meter, capabilities
from pytest_energy.meters.cputime import cpu_model_name

MAX_SLUG_CHARACTERS = 48
_TRADEMARKS = re.compile(r"\((r|tm|c)\)|®|™", re.IGNORECASE)
_FILLER_WORDS = re.compile(r"\b(cpu|processor|\d+-core)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Profile:
    """The meter and hardware a baseline file belongs to.

    Attributes:
        name: the file stem, e.g. ``cputime-amd-epyc-7b13-2t`` (``baselines/<name>.json``).
        meter: the meter's name (``cputime``, ``counted``, ...).
        kind: ``measured``, ``estimated`` or ``counted``.
        fingerprint: the hardware, e.g. ``{"cpu_model": "AMD EPYC 7B13", "cpu_threads": 2}``;
            empty for ``counted``.
    """

    name: str
    meter: str
    kind: str
    fingerprint: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "meter": self.meter,
            "kind": self.kind,
            "fingerprint": dict(self.fingerprint),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Inverse of ``to_dict``; raises ``KeyError``/``TypeError`` on a malformed dict."""
        fingerprint = data.get("fingerprint", {})
        if not isinstance(fingerprint, Mapping):
            raise TypeError("fingerprint must be an object")
        name, meter, kind = data["name"], data["meter"], data["kind"]
        if not all(isinstance(value, str) for value in (name, meter, kind)):
            raise TypeError("name, meter and kind must be strings")
        return cls(name=name, meter=meter, kind=kind, fingerprint=dict(fingerprint))

    def describe(self) -> str:
        """For people: ``cputime on AMD EPYC 7B13 (2 threads)``."""
        return f"{self.meter} on {describe_hardware(self.fingerprint)}"

    def matches(self, other: Profile) -> bool:
        return (self.meter, self.kind, _canonical(self.fingerprint)) == (
            other.meter,
            other.kind,
            _canonical(other.fingerprint),
        )


def _canonical(fingerprint: Mapping[str, Any]) -> str:
    return json.dumps(fingerprint, sort_keys=True, default=str)


def describe_hardware(fingerprint: Mapping[str, Any]) -> str:
    """``AMD EPYC 7B13 (2 threads)``, ``NVIDIA H100 (700 W limit), driver 550`` or ``any``."""
    if not fingerprint:
        return "any machine"
    if "gpus" in fingerprint:
        gpus = ", ".join(
            f"{gpu.get('name', '?')}"
            + (f" ({gpu['power_limit_watts']:g} W limit)" if gpu.get("power_limit_watts") else "")
            for gpu in fingerprint.get("gpus", [])
        )
        driver = fingerprint.get("driver_major")
        return gpus + (f", driver {driver}" if driver else "")
    details = [f"{fingerprint.get('cpu_threads', '?')} threads"]
    if "cpu_family" in fingerprint:
        details.append(
            f"family {fingerprint['cpu_family']} model {fingerprint.get('cpu_model_number', '?')}"
            f" stepping {fingerprint.get('cpu_stepping', '?')}"
        )
    if fingerprint.get("cpu_isa"):
        details.append(f"torch kernels {fingerprint['cpu_isa']}")
    return f"{fingerprint.get('cpu_model', '?')} ({', '.join(details)})"


def hardware_difference(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """Why two fingerprints differ, in words (``None`` when they are the same hardware)."""
    if _canonical(baseline) == _canonical(current):
        return None
    if "gpus" in baseline or "gpus" in current:
        old_names = [gpu.get("name") for gpu in baseline.get("gpus", [])]
        new_names = [gpu.get("name") for gpu in current.get("gpus", [])]
        if old_names != new_names:
            return f"baseline from another GPU ({describe_hardware(baseline)})"
        if baseline.get("driver_major") != current.get("driver_major"):
            return (
                f"baseline from GPU driver {baseline.get('driver_major')}, "
                f"this run {current.get('driver_major')}"
            )
        return f"baseline from a GPU with another power limit ({describe_hardware(baseline)})"
    if baseline.get("cpu_model") != current.get("cpu_model"):
        return f"baseline from another CPU ({describe_hardware(baseline)})"
    return f"baseline from another machine ({describe_hardware(baseline)})"


def slug(text: str) -> str:
    """Lower-case letters, digits and single dashes: ``Intel(R) Xeon(R) CPU @ 2.20GHz`` →
    ``intel-xeon-2-20ghz``."""
    text = _FILLER_WORDS.sub(" ", _TRADEMARKS.sub(" ", text))
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _bounded(name: str, fingerprint: Mapping[str, Any]) -> str:
    """Cut a long name and add a short hash of the fingerprint so cut names stay distinct."""
    if len(name) <= MAX_SLUG_CHARACTERS:
        return name
    digest = hashlib.sha256(_canonical(fingerprint).encode()).hexdigest()[:8]
    return f"{name[: MAX_SLUG_CHARACTERS - 9].rstrip('-')}-{digest}"


CPUINFO_FIELDS = {
    "vendor_id": "cpu_vendor",
    "cpu family": "cpu_family",
    "model": "cpu_model_number",
    "stepping": "cpu_stepping",
}
"""/proc/cpuinfo keys that tell CPUs of one marketing name apart (an EPYC can be Zen 2 or 3)."""


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """Vendor, family, model number and stepping of the first processor (empty elsewhere)."""
    found: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                name = CPUINFO_FIELDS.get(key.strip())
                if name is not None:
                    found[name] = value.strip()
    except OSError:
        pass
    return found


def cpu_capability() -> str | None:
    """The ISA level torch dispatches its CPU kernels to (``AVX2``, ``AVX512``, ...)."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # no torch, or a build without the query: leave it out, never guess
        return None


def cpu_fingerprint() -> dict[str, Any]:
    """This CPU: model name, hardware threads, vendor, family/model/stepping, torch's ISA level.

    Two VMs that both report "AMD EPYC" can run the same step 3x apart (an AVX-512 host and
    an AVX2-only Zen 3): family, model and the ISA torch dispatches to tell them apart.
    """
    fingerprint: dict[str, Any] = {
        "cpu_model": cpu_model_name(),
        "cpu_threads": os.cpu_count() or 1,
    }
    fingerprint.update(_cpuinfo())
    capability = cpu_capability()
    if capability:
        fingerprint["cpu_isa"] = capability
    return fingerprint


def gpu_fingerprint(meter: Meter, nvml: ModuleType | None = None) -> dict[str, Any]:
    """Name and power limit of each GPU the nvml meter measures, and the driver's major version.

    Queries NVML (``nvml`` defaults to ``pynvml``); a figure NVML will not give is left out
    rather than guessed.
    """
    if nvml is None:
        import pynvml as nvml
    gpus_described = meter.describe().get("gpus", {})
    gpus: list[dict[str, Any]] = []
    driver_major = None
    nvml.nvmlInit()
    try:
        try:
            driver = nvml.nvmlSystemGetDriverVersion()
            driver = driver.decode() if isinstance(driver, bytes) else str(driver)
            driver_major = driver.split(".", 1)[0]
        except nvml.NVMLError:
            pass
        for domain in sorted(gpus_described):
            described = gpus_described[domain]
            entry: dict[str, Any] = {"name": described.get("name", "unknown")}
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(described["nvml_index"])
                milliwatts = nvml.nvmlDeviceGetPowerManagementLimit(handle)
                entry["power_limit_watts"] = round(milliwatts / 1000)
            except (nvml.NVMLError, KeyError):
                pass
            gpus.append(entry)
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
    fingerprint: dict[str, Any] = {"gpus": gpus}
    if driver_major is not None:
        fingerprint["driver_major"] = driver_major
    return fingerprint


def profile_name(meter: str, kind: str, fingerprint: Mapping[str, Any]) -> str:
    """The file stem of a profile (see the module docstring)."""
    if capabilities(kind).deterministic or not fingerprint:
        return slug(meter)
    if "gpus" in fingerprint:
        names = [gpu.get("name", "unknown") for gpu in fingerprint["gpus"]]
        limits = sorted({gpu.get("power_limit_watts") for gpu in fingerprint["gpus"]} - {None})
        parts = [meter]
        if len(set(names)) == 1 and len(names) > 1:
            parts.append(f"{len(names)}x")
        parts += [slug(name) for name in dict.fromkeys(names)]
        if fingerprint.get("driver_major"):
            parts.append(f"drv{fingerprint['driver_major']}")
        parts += [f"{limit:g}w" for limit in limits]
        return _bounded(slug("-".join(parts)), fingerprint)
    name = f"{meter}-{slug(str(fingerprint.get('cpu_model', 'unknown')))}"
    if "cpu_family" in fingerprint:
        name += f"-f{fingerprint['cpu_family']}m{fingerprint.get('cpu_model_number', '')}"
    if fingerprint.get("cpu_isa"):
        name += f"-{fingerprint['cpu_isa']}"
    return _bounded(slug(f"{name}-{fingerprint.get('cpu_threads', 0)}t"), fingerprint)


def make_profile(meter: str, kind: str, fingerprint: Mapping[str, Any]) -> Profile:
    return Profile(profile_name(meter, kind, fingerprint), meter, kind, dict(fingerprint))


def profile_for(meter: Meter, nvml: ModuleType | None = None) -> Profile:
    """The profile of a meter in use on this machine."""
    if meter.deterministic:  # the same figures on any machine
        fingerprint: dict[str, Any] = {}
    elif meter.name == "nvml":
        fingerprint = gpu_fingerprint(meter, nvml)
    else:
        fingerprint = cpu_fingerprint()
    return make_profile(meter.name, meter.kind, fingerprint)


def profile_from_results(document: Mapping[str, Any], meter: str, kind: str) -> Profile:
    """The profile a results document recorded ``meter`` under.

    Documents written by this version carry ``profiles``; for older ones the profile is
    rebuilt from the machine and meter descriptions (GPU names only: no driver or power limit).
    """
    recorded = document.get("profiles", {})
    if isinstance(recorded, Mapping) and isinstance(recorded.get(meter), Mapping):
        try:
            return Profile.from_dict(recorded[meter])
        except (KeyError, TypeError):
            pass
    if capabilities(kind).deterministic:
        return make_profile(meter, kind, {})
    machine = document.get("machine", {}) if isinstance(document.get("machine"), Mapping) else {}
    if meter == "nvml":
        described = next(
            (
                item
                for item in document.get("meters", [])
                if isinstance(item, Mapping) and item.get("name") == "nvml"
            ),
            {},
        )
        gpus = described.get("gpus", {}) if isinstance(described.get("gpus"), Mapping) else {}
        fingerprint: dict[str, Any] = {
            "gpus": [{"name": gpus[domain].get("name", "unknown")} for domain in sorted(gpus)]
        }
    else:
        fingerprint = {
            "cpu_model": machine.get("cpu_model", "unknown"),
            "cpu_threads": machine.get("cpu_threads", 0),
        }
    return make_profile(meter, kind, fingerprint)
