"""Counted energy: operations and bytes of every torch operator × energy per operation.

The ``counted`` meter gives the same figure for the same code on any machine, which makes it
the meter to gate CI on shared runners. While a window is open it pushes a
``TorchDispatchMode`` that sees every torch operator run on the thread that opened the window,
backward operators of ``loss.backward()`` included (on CPU autograd runs them on the calling
thread; its device threads take the caller's thread-local state, dispatch modes included), and
charges:

- **compute**: multiply-accumulates (MACs) × energy of one MAC at the operands' precision.
  MACs are half of the FLOPs that ``torch.utils.flop_counter`` counts (its formulas count 2
  FLOPs per MAC), so ``Reading.flops`` equals what ``FlopCounterMode`` reports, and
  ``flops / 2`` is what torchvision publishes as "GFLOPS" (multiply-accumulates).
  Operators flop_counter has no formula for (element-wise ops, norms, pooling) are charged for
  their memory traffic only. Eager int8 operators (``quantized::conv2d``, ``conv2d_relu``,
  ``linear``, ``linear_relu``, ``linear_dynamic`` and the rest of the conv/linear families) do
  reach the dispatch mode, with their weight inside a packed-params script object; their MACs
  are counted from the unpacked weight's shape and the input/output shapes, at int8.
- **memory**: bytes moved × DRAM energy per bit. An operator moves the bytes of its tensor
  inputs and outputs (numel × element size, quantized dtypes at their storage size, packed
  quantized weights and biases included); an in-place operator reads and writes its target.
  Operators that only make a new view of existing data (their schema says the result aliases an
  input: view, reshape-as-view, transpose, expand, detach, slice, ...) and allocations that
  write nothing (``empty*``) move no bytes; copies (``_to_copy``, ``clone``, ``contiguous``) do.
  Every byte is charged at DRAM cost: no cache is modelled, so the figure is an upper bound
  that does not depend on the machine.

Energy per operation comes from Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm);
the DRAM figure is the 640 pJ per 32-bit access that Han et al. (2015) take from it. A MAC
costs one multiply plus one add at its precision; int8 MACs accumulate in int32, so they cost
``int8_mult_pj + int32_add_pj``. float64 and complex operands are charged as fp32, bfloat16 and
8-bit floats as fp16, 16/32/64-bit integers as int32 (the table has no closer row).

Not counted: work that bypasses the torch dispatcher (compiled graphs, direct C++ kernels),
higher-order operators (run, not counted), and operators run on threads other than the window's
own (except autograd's).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pytest_energy.errors import ConfigError, MeasurementError, MeterError
from pytest_energy.meters.base import Meter, Reading

ENERGY_TABLE_SOURCE = "Horowitz ISSCC 2014, 45 nm"

DEFAULT_ENERGY_TABLE_PICOJOULES: Mapping[str, float] = {
    "fp32_mult_pj": 3.7,
    "fp32_add_pj": 0.9,
    "fp16_mult_pj": 1.1,
    "fp16_add_pj": 0.4,
    "int8_mult_pj": 0.2,
    "int8_add_pj": 0.03,
    "int32_mult_pj": 3.1,
    "int32_add_pj": 0.1,
    "dram_pj_per_32_bits": 640.0,
}
"""Picojoules per operation. ``fp16_*`` also prices bfloat16; ``int8_add_pj`` is not used by
the MAC model (int8 MACs accumulate in int32) but may be overridden like any other key."""

PRECISIONS = ("fp32", "fp16", "int8", "int32")
"""The precisions a MAC is charged at (rows of the energy table)."""

_MAC_COST_KEYS: Mapping[str, tuple[str, str]] = {
    "fp32": ("fp32_mult_pj", "fp32_add_pj"),
    "fp16": ("fp16_mult_pj", "fp16_add_pj"),
    "int8": ("int8_mult_pj", "int32_add_pj"),
    "int32": ("int32_mult_pj", "int32_add_pj"),
}

_PRECISION_BY_DTYPE_NAME: Mapping[str, str] = {
    "float32": "fp32",
    "float64": "fp32",
    "complex64": "fp32",
    "complex128": "fp32",
    "float16": "fp16",
    "bfloat16": "fp16",
    "complex32": "fp16",
    "float8_e4m3fn": "fp16",
    "float8_e4m3fnuz": "fp16",
    "float8_e5m2": "fp16",
    "float8_e5m2fnuz": "fp16",
    "int8": "int8",
    "uint8": "int8",
    "bool": "int8",
    "qint8": "int8",
    "quint8": "int8",
    "quint4x2": "int8",
    "quint2x4": "int8",
    "int16": "int32",
    "int32": "int32",
    "int64": "int32",
    "uint16": "int32",
    "uint32": "int32",
    "uint64": "int32",
    "qint32": "int32",
}

_PICOJOULES_PER_JOULE = 1e12
_BITS_PER_BYTE = 8


def validate_energy_table(
    overrides: Mapping[str, Any] | None, source: str = "energy table"
) -> dict[str, float]:
    """The default table with ``overrides`` applied, each key and value checked.

    Raises ``ConfigError`` naming ``source`` and the key for an unknown key or a value that is
    not a finite number ≥ 0 (in picojoules).
    """
    table = dict(DEFAULT_ENERGY_TABLE_PICOJOULES)
    if overrides is None:
        return table
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"counted meter {source}: expected a mapping of keys such as 'fp32_mult_pj' to "
            f"picojoules, got {type(overrides).__name__}"
        )
    for key, value in overrides.items():
        if key not in DEFAULT_ENERGY_TABLE_PICOJOULES:
            raise ConfigError(
                f"counted meter {source}: unknown key {key!r}; known keys: "
                f"{', '.join(DEFAULT_ENERGY_TABLE_PICOJOULES)}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"counted meter {source}: {key} must be a number of picojoules, got {value!r}"
            )
        if not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"counted meter {source}: {key} must be finite and ≥ 0 picojoules, got {value!r}"
            )
        table[key] = float(value)
    return table


def load_energy_table(path: str | os.PathLike[str]) -> dict[str, float]:
    """Read energy-table overrides (a JSON object of key → picojoules) from ``path``.

    Returns the overrides only, validated, ready for ``CountedMeter(energy_table=...)``.
    Raises ``ConfigError`` naming the file when it cannot be read, is not JSON, is not an
    object, or holds an unknown key or a bad value.
    """
    source = f"energy table file {os.fspath(path)!s}"
    try:
        with open(path, encoding="utf-8") as table_file:
            loaded = json.load(table_file)
    except OSError as error:
        raise ConfigError(
            f"counted meter {source}: cannot be read ({error.strerror or error})"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"counted meter {source}: not valid JSON ({error})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"counted meter {source}: expected a JSON object such as "
            f'{{"fp32_mult_pj": 3.7}}, got a JSON {type(loaded).__name__}'
        )
    validate_energy_table(loaded, source)
    return {key: float(value) for key, value in loaded.items()}


def mac_picojoules(table: Mapping[str, float], precision: str) -> float:
    """Energy of one multiply-accumulate at ``precision`` (one of ``PRECISIONS``), in pJ."""
    mult_key, add_key = _MAC_COST_KEYS[precision]
    return table[mult_key] + table[add_key]


def memory_picojoules_per_byte(table: Mapping[str, float]) -> float:
    """Energy of moving one byte to or from DRAM, in pJ."""
    return table["dram_pj_per_32_bits"] * _BITS_PER_BYTE / 32


class _Tally:
    """What one window counted: MACs per precision, FLOPs per operator, bytes per dtype."""

    __slots__ = ("bytes_by_dtype", "flops_by_operator", "macs_by_precision", "operator_calls")

    def __init__(self) -> None:
        self.macs_by_precision: dict[str, int] = {}
        self.flops_by_operator: dict[str, int] = {}
        self.bytes_by_dtype: dict[Any, int] = {}
        self.operator_calls = 0


class _OperatorPlan:
    """How one operator overload is counted; worked out once per overload."""

    __slots__ = ("decomposable", "moves_bytes", "name", "packed_family", "packet")

    def __init__(self, func: Any) -> None:
        import torch

        self.packet = func._overloadpacket
        self.name = str(self.packet)
        self.moves_bytes = not (func.is_view or func in _no_byte_operators())
        self.decomposable = func is not torch.ops.prim.device.default and (
            torch._C.DispatchKey.CompositeImplicitAutograd in func.py_kernels
            or func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd)
        )
        self.packed_family = _packed_family(func)


def _packed_family(func: Any) -> str | None:
    """``conv``, ``conv_transpose``, ``linear`` or ``linear_fp16`` for a quantized operator that
    takes packed weights; ``None`` for every other operator."""
    if func.namespace != "quantized":
        return None
    name = func._overloadpacket.__name__
    if not any("PackedParamsBase" in str(argument.type) for argument in func._schema.arguments):
        return None
    if name.startswith("conv_transpose"):
        return "conv_transpose"
    if name.startswith("conv"):
        return "conv"
    if name.startswith("linear"):
        return "linear_fp16" if "fp16" in name else "linear"
    return None


@functools.cache
def _no_byte_operators() -> frozenset[Any]:
    """Operators that move no data although their schema does not mark them as views."""
    import torch

    aten = torch.ops.aten
    candidates = [
        (aten._unsafe_view, "default"),
        (aten.empty, "memory_format"),
        (aten.empty_strided, "default"),
        (aten.empty_like, "default"),
        (aten.empty_permuted, "default"),
        (aten.new_empty, "default"),
        (aten.new_empty_strided, "default"),
        (aten.is_contiguous, "default"),
        (aten.is_contiguous, "memory_format"),
        (aten.is_strides_like_format, "default"),
        (aten.is_non_overlapping_and_dense, "default"),
        (aten.size, "default"),
        (aten.sym_size, "default"),
        (aten.stride, "default"),
        (aten.sym_stride, "default"),
        (aten.storage_offset, "default"),
        (aten.sym_storage_offset, "default"),
        (aten.numel, "default"),
        (aten.sym_numel, "default"),
        (aten.dim, "default"),
        (torch.ops.prim.layout, "default"),
        (torch.ops.prim.device, "default"),
    ]
    return frozenset(
        getattr(packet, overload)
        for packet, overload in candidates
        if overload in packet.overloads()
    )


@functools.cache
def _counting_mode_class() -> type:
    """The dispatch mode class, defined on first use so that importing this module stays cheap."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import conv_flop_count, flop_registry

    plans: dict[Any, _OperatorPlan] = {}

    def _tensors(values: Any) -> Iterator[torch.Tensor]:
        for value in values:
            if isinstance(value, torch.Tensor):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from _tensors(value)

    class CountingMode(TorchDispatchMode):
        """Runs each operator unchanged and adds its MACs and bytes to the current tally."""

        def __init__(self) -> None:
            super().__init__()
            self.tally = _Tally()
            self.packed_weights: dict[int, tuple[Any, tuple[int, ...], list[Any]]] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            plan = plans.get(func)
            if plan is None:
                if not isinstance(func, torch._ops.OpOverload):
                    return func(*args, **kwargs)
                plan = plans[func] = _OperatorPlan(func)
            formula = flop_registry.get(plan.packet)
            if formula is None and plan.packed_family is None and plan.decomposable:
                with self:
                    result = func.decompose(*args, **kwargs)
                if result is not NotImplemented:
                    return result
            out = func(*args, **kwargs)
            tally = self.tally
            tally.operator_calls += 1
            if plan.moves_bytes:
                self._count_bytes(args, kwargs, out)
            if formula is not None:
                try:
                    flops = int(formula(*args, **kwargs, out_val=out))
                except Exception as error:
                    raise MeterError(
                        f"counted meter: torch.utils.flop_counter's formula for {plan.name} "
                        f"failed ({type(error).__name__}: {error})"
                    ) from error
                if flops:
                    first = next(_tensors(args), None)
                    precision = _precision(first.dtype) if first is not None else "fp32"
                    self._add(plan.name, precision, flops)
            elif plan.packed_family is not None:
                self._count_packed(plan, args, out)
            return out

        def _add(self, operator: str, precision: str, flops: int) -> None:
            tally = self.tally
            tally.flops_by_operator[operator] = tally.flops_by_operator.get(operator, 0) + flops
            macs = tally.macs_by_precision
            macs[precision] = macs.get(precision, 0) + flops // 2

        def _count_bytes(self, args: Any, kwargs: Mapping[str, Any], out: Any) -> None:
            by_dtype = self.tally.bytes_by_dtype
            for tensor in _tensors((args, tuple(kwargs.values()), out)):
                by_dtype[tensor.dtype] = by_dtype.get(tensor.dtype, 0) + tensor.nbytes

        def _count_packed(self, plan: _OperatorPlan, args: Any, out: Any) -> None:
            packed = next(arg for arg in args if isinstance(arg, torch.ScriptObject))
            x = next(_tensors(args))
            cached = self.packed_weights.get(id(packed))
            if cached is None:
                cached = self.packed_weights[id(packed)] = _unpacked_sizes(packed, plan)
            _, weight_shape, bytes_by_dtype = cached
            by_dtype = self.tally.bytes_by_dtype
            for dtype, size in bytes_by_dtype:
                by_dtype[dtype] = by_dtype.get(dtype, 0) + size
            if plan.packed_family.startswith("linear"):
                flops = 2 * out.numel() * weight_shape[1]
            else:
                transposed = plan.packed_family == "conv_transpose"
                flops = conv_flop_count(
                    list(x.shape), list(weight_shape), list(out.shape), transposed
                )
            precision = "fp32" if plan.packed_family == "linear_fp16" else "int8"
            self._add(plan.name, precision, flops)

    return CountingMode


def _unpacked_sizes(packed: Any, plan: _OperatorPlan) -> tuple[Any, tuple[int, ...], list[Any]]:
    """The packed params (kept alive so its id is not reused during the window), the weight's
    shape and the (dtype, bytes) of its weight and bias as stored."""
    import torch

    weight, bias = packed.unpack()[:2]
    if plan.packed_family == "linear_fp16":
        sizes = [(torch.float16, weight.numel() * 2)]
    else:
        sizes = [(weight.dtype, weight.nbytes)]
    if bias is not None:
        sizes.append((bias.dtype, bias.nbytes))
    return packed, tuple(weight.shape), sizes


@functools.cache
def _precision_by_dtype() -> dict[Any, str]:
    import torch

    return {
        getattr(torch, name): precision
        for name, precision in _PRECISION_BY_DTYPE_NAME.items()
        if isinstance(getattr(torch, name, None), torch.dtype)
    }


def _precision(dtype: Any) -> str:
    return _precision_by_dtype().get(dtype, "fp32")


class CountedMeter(Meter):
    """Deterministic energy from counted MACs and bytes moved, priced by a per-operation table.

    Args:
        energy_table: overrides of ``DEFAULT_ENERGY_TABLE_PICOJOULES`` (picojoules per
            operation; keys ``fp32_mult_pj``, ``fp32_add_pj``, ``fp16_mult_pj``,
            ``fp16_add_pj``, ``int8_mult_pj``, ``int8_add_pj``, ``int32_mult_pj``,
            ``int32_add_pj``, ``dram_pj_per_32_bits``). Unknown keys raise ``ConfigError``.

    The reading's domains are ``compute`` (MACs) and ``memory`` (bytes moved); ``details`` holds
    MACs per precision, FLOPs per operator, bytes per dtype and the table used.
    """

    name = "counted"
    kind = "counted"
    deterministic = True
    min_window_seconds = 0.0

    def __init__(self, energy_table: Mapping[str, float] | None = None) -> None:
        self.energy_table: dict[str, float] = validate_energy_table(energy_table)
        self._overridden = sorted(
            key
            for key, value in self.energy_table.items()
            if value != DEFAULT_ENERGY_TABLE_PICOJOULES[key]
        )
        self._mac_picojoules = {
            precision: mac_picojoules(self.energy_table, precision) for precision in PRECISIONS
        }
        self._memory_picojoules_per_byte = memory_picojoules_per_byte(self.energy_table)
        self._mode: Any = None
        self._innermost_mode: Callable[[], Any] = lambda: None
        self._window_thread: int | None = None
        self._started_seconds = 0.0

    @classmethod
    def unavailable_reason(cls, **options: Any) -> str | None:
        """``None`` when torch is installed: counting needs nothing else."""
        try:
            if importlib.util.find_spec("torch") is None:
                return "counted: torch is not installed"
        except (ImportError, ValueError) as error:
            return f"counted: torch cannot be found ({error})"
        return None

    @property
    def energy_table_source(self) -> str:
        """Where the table's figures come from, naming the keys the user overrode."""
        if not self._overridden:
            return ENERGY_TABLE_SOURCE
        return f"{ENERGY_TABLE_SOURCE}; overridden: {', '.join(self._overridden)}"

    def start(self) -> None:
        """Open a window: count every operator run on this thread until ``stop()``."""
        if self._window_thread is not None:
            raise MeasurementError(
                "counted meter: start() called while a window is open; call stop() first"
            )
        if self._mode is None:
            from torch.utils._python_dispatch import _get_current_dispatch_mode

            self._mode = _counting_mode_class()()
            self._innermost_mode = _get_current_dispatch_mode
        self._mode.tally = _Tally()
        self._mode.__enter__()
        self._window_thread = threading.get_ident()
        self._started_seconds = time.perf_counter()

    def stop(self) -> Reading:
        """Close the window and price what it counted."""
        stopped_seconds = time.perf_counter()
        if self._window_thread is None:
            raise MeasurementError("counted meter: stop() called without start()")
        if self._window_thread != threading.get_ident():
            raise MeasurementError(
                "counted meter: stop() must be called on the thread that called start()"
            )
        if self._innermost_mode() is not self._mode:
            raise MeasurementError(
                "counted meter: a dispatch mode entered inside the window is still active; "
                "exit it before the window closes"
            )
        self._mode.__exit__(None, None, None)
        self._window_thread = None
        tally = self._mode.tally
        self._mode.packed_weights.clear()
        return self._reading(tally, stopped_seconds - self._started_seconds)

    def _reading(self, tally: _Tally, seconds: float) -> Reading:
        macs_by_precision = {
            precision: tally.macs_by_precision[precision]
            for precision in PRECISIONS
            if precision in tally.macs_by_precision
        }
        compute_picojoules = sum(
            macs * self._mac_picojoules[precision] for precision, macs in macs_by_precision.items()
        )
        bytes_moved = sum(tally.bytes_by_dtype.values())
        memory_picojoules = bytes_moved * self._memory_picojoules_per_byte
        return Reading(
            meter=self.name,
            kind=self.kind,
            seconds=seconds,
            joules_by_domain={
                "compute": compute_picojoules / _PICOJOULES_PER_JOULE,
                "memory": memory_picojoules / _PICOJOULES_PER_JOULE,
            },
            flops=sum(tally.flops_by_operator.values()),
            bytes_moved=bytes_moved,
            details={
                "macs_by_precision": macs_by_precision,
                "mac_picojoules": dict(self._mac_picojoules),
                "flops_by_operator": dict(sorted(tally.flops_by_operator.items())),
                "bytes_moved_by_dtype": {
                    str(dtype).removeprefix("torch."): size
                    for dtype, size in tally.bytes_by_dtype.items()
                },
                "operator_calls": tally.operator_calls,
                "energy_table_picojoules": dict(self.energy_table),
                "energy_table_source": self.energy_table_source,
            },
        )

    def describe(self) -> dict[str, Any]:
        """Name, kind, the energy table and its source, and what is counted."""
        return {
            "name": self.name,
            "kind": self.kind,
            "energy_table_picojoules": dict(self.energy_table),
            "energy_table_source": self.energy_table_source,
            "compute": "MACs from torch.utils.flop_counter (FLOPs / 2) and int8 quantized "
            "conv/linear × (mult + add) pJ at the operands' precision; int8 accumulates in int32",
            "memory": "bytes of every operator's tensor inputs and outputs (views and empty "
            "allocations move none) × DRAM pJ per bit",
        }

    def close(self) -> None:
        """Close a window left open, so the dispatch mode does not outlive the meter."""
        if self._window_thread == threading.get_ident():
            self._mode.__exit__(None, None, None)
            self._window_thread = None


def count(fn: Callable[[], object], energy_table: Mapping[str, float] | None = None) -> Reading:
    """Run ``fn()`` once inside a ``counted`` window and return the reading."""
    meter = CountedMeter(energy_table)
    meter.start()
    try:
        fn()
    finally:
        reading = meter.stop()
    return reading
