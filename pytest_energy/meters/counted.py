"""Counted energy: operations and bytes of every torch operator × energy per operation.

The ``counted`` meter gives the same figure for the same code on any machine, which makes it
the meter to gate CI on shared runners. While a window is open it pushes a
``TorchDispatchMode`` that sees every torch operator run on the thread that opened the window,
backward operators of ``loss.backward()`` included (on CPU autograd runs them on the calling
thread; its device threads take the caller's thread-local state, dispatch modes included), and
charges:

- **compute**: multiply-accumulates (MACs) × energy of one MAC at the operands' precision.
  MACs are half of the FLOPs counted (2 FLOPs per MAC, as ``torch.utils.flop_counter``), so
  ``Reading.flops / 2`` is what torchvision publishes as "GFLOPS". Formulas: every operator
  ``torch.utils.flop_counter`` knows (mm, addmm, bmm, convolutions, the CUDA attention kernels,
  ``_scaled_mm``) and, added here, the CPU flash-attention kernel and its backward,
  ``_native_multi_head_attention``, the fused ``_transformer_encoder_layer_fwd``, recurrent
  layers (``mkldnn_rnn_layer``, ``_cudnn_rnn``, ``miopen_rnn`` and their backwards; cells and
  GRU/RNN decompose to mm/addmm), ``mv``/``addmv``/``dot``/``addbmm``/``_addmm_activation``/
  ``_int_mm``, ``torch.cdist``'s kernels (``_cdist_forward``/``_cdist_backward`` and
  ``_euclidean_dist``, its matmul path), eager int8 operators (``quantized::conv2d``, ``linear`` ...
  with packed weights) and oneDNN's PT2E kernels (``onednn::qconv_pointwise``,
  ``qconv2d_pointwise``, ``qlinear_pointwise``, ``linear_dynamic_fp16``). A GEMM or conv
  whose operands both come straight from a ``dequantize`` (PT2E's reference q/dq form, which a
  backend lowers to an int8 kernel) is charged at the quantized precision.
  Element-wise operators, norms, pooling, reductions, copies and indexing are charged for their
  memory traffic only (they are *memory-only*). Any other operator with tensor inputs has no
  formula here: it is named in ``details["uncounted_operators"]`` and in a warning, never a
  quiet 0.
- **memory**: a two-level model (after Horowitz, ISSCC 2014, and Yang et al., "Designing
  Energy-Efficient Convolutional Neural Networks using Energy-Aware Pruning", CVPR 2017): an
  operator moves the bytes of its tensor inputs and outputs; smallest first, its operands are
  on chip (SRAM energy) while their total fits ``sram_capacity_bytes``, and the rest move to and
  from DRAM. Views and empty allocations move nothing; in-place operators read and write
  their target.

Energy per operation comes from Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm):
MAC rows per precision, 100 pJ per 64-bit access of a 1 MB SRAM, and the 640 pJ per 32-bit
DRAM access Han et al. (2015) take from it. A MAC costs one multiply plus one add at its
precision; int8 MACs accumulate in int32 (``int8_mult_pj + int32_add_pj``). float64 and complex
operands are charged as fp32, bfloat16 and 8-bit floats as fp16, 16/32/64-bit integers as int32
(the table has no closer row). ``pytest-energy calibrate`` fits the table to a real meter.

``torch.compile``d code is counted: a window sets torch.compile's ``force_eager`` stance, so
compiled functions (``fullgraph=True`` ones too) run their original eager code and counted
sees every operator (the timed meters beside it in a shared window then time that eager run).

Counting's own cost is nobody's TEC. Per operator call, the dispatch mode costs a few
microseconds of CPU on the window's thread (a Python call per operator; formulas, precision
and bytes are cached per operator, shapes and dtypes, and views and metadata operators pass
through before any of it). In ``energy.inference`` counted counts one call in a window of its
own. In a window it shares with a timed meter (``energy.train``), counted reports that CPU
time (``bookkeeping``: its operator calls × the cost of one call, measured once per process by
``bookkeeping_seconds_per_call``) and the timed meter takes it out of its reading
(``cputime`` does; ``rapl`` and ``nvml`` read whole-device counters and cannot). The per-call
cost is measured on a loop whose code stays in cache; a real step's kernels evict it, so what
is taken out is a lower bound, and cputime beside counted still reads a few % high on loads of
short operators (``python -m benchmarks.overhead`` prints both). A larger figure would take
out more than counting cost on loads of tiny tensors.

Higher-order operators (``torch.cond``, ``while_loop``, ``scan``, ``map``): the functions
they are given run with the dispatch mode active, so the branch taken and every loop
iteration are counted; ``flex_attention`` (and its backward) is counted as dense attention.
Differentiating through ``torch.cond`` fails under any dispatch mode (torch's limitation: its
eager path lifts the branches' parameters by compiling, which dynamo skips under a mode).

Not counted: work that bypasses the torch dispatcher (direct C++ kernels), and operators run
on threads other than the window's own (except autograd's).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pytest_energy.errors import ConfigError, MeasurementError
from pytest_energy.meters.base import Bookkeeping, Meter, PendingReading, Reading

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
    "sram_pj_per_64_bits": 100.0,
    "dram_pj_per_32_bits": 640.0,
    "sram_capacity_bytes": 1024.0 * 1024.0,
    "operator_call_pj": 0.0,
}
"""Picojoules per operation (and the on-chip capacity in bytes). ``fp16_*`` also prices
bfloat16 and 8-bit floats; ``int8_add_pj`` is not used by the MAC model (int8 MACs accumulate
in int32) but may be overridden like any other key. ``sram_capacity_bytes`` is the on-chip
memory an operator's operands must fit to be charged at ``sram_pj_per_64_bits``.
``operator_call_pj`` is a fixed cost per operator call (dispatch, kernel launch): 0 in the
published model, fitted by ``pytest-energy calibrate`` where the hardware's data need it."""

CALIBRATION_KEY = "calibration"
"""Reserved table key: where a fitted table came from (``hardware``, ``date``, ``meter``...)."""

MEMORY_MODEL = (
    "two-level: per operator, its tensor operands (inputs and outputs), smallest first, are on "
    "chip at SRAM energy while their total fits sram_capacity_bytes; the rest move to and from "
    "DRAM (Horowitz ISSCC 2014 energies; Yang et al. CVPR 2017 hierarchy). Views and empty "
    "allocations move nothing."
)

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
_QUANTIZED_MARK = "_pytest_energy_quantized_precision"
"""Attribute a counting window sets on a ``dequantize`` output: the precision it came from."""


def validate_energy_table(
    overrides: Mapping[str, Any] | None, source: str = "energy table"
) -> dict[str, float]:
    """The default table with ``overrides`` applied, each key and value checked.

    Raises ``ConfigError`` naming ``source`` and the key for an unknown key or a value that is
    not a finite number ≥ 0 (picojoules; bytes for ``sram_capacity_bytes``). The reserved key
    ``calibration`` (where a fitted table came from) is checked and left out of the result.
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
        if key == CALIBRATION_KEY:
            calibration_label(value, source)
            continue
        if key not in DEFAULT_ENERGY_TABLE_PICOJOULES:
            raise ConfigError(
                f"counted meter {source}: unknown key {key!r}; known keys: "
                f"{', '.join(DEFAULT_ENERGY_TABLE_PICOJOULES)}, {CALIBRATION_KEY}"
            )
        unit = "bytes" if key == "sram_capacity_bytes" else "picojoules"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"counted meter {source}: {key} must be a number of {unit}, got {value!r}"
            )
        if not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"counted meter {source}: {key} must be finite and ≥ 0 {unit}, got {value!r}"
            )
        table[key] = float(value)
    return table


def calibration_label(calibration: Any, source: str = "energy table") -> str:
    """``calibrated to <hardware>, <date>`` for a table's ``calibration`` entry, checked."""
    if not isinstance(calibration, Mapping) or not all(
        isinstance(calibration.get(field), str) and calibration.get(field)
        for field in ("hardware", "date")
    ):
        raise ConfigError(
            f"counted meter {source}: {CALIBRATION_KEY} must be an object with non-empty "
            f"'hardware' and 'date' strings (as `pytest-energy calibrate` writes it), got "
            f"{calibration!r}"
        )
    return f"calibrated to {calibration['hardware']}, {calibration['date']}"


def load_energy_table(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read energy-table overrides (a JSON object of key → picojoules) from ``path``.

    Returns the overrides only, validated, ready for ``CountedMeter(energy_table=...)``
    (a ``calibration`` entry, when present, is kept for the meter's label).
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
    return {
        key: (dict(value) if key == CALIBRATION_KEY else float(value))
        for key, value in loaded.items()
    }


def mac_picojoules(table: Mapping[str, float], precision: str) -> float:
    """Energy of one multiply-accumulate at ``precision`` (one of ``PRECISIONS``), in pJ."""
    mult_key, add_key = _MAC_COST_KEYS[precision]
    return table[mult_key] + table[add_key]


def memory_picojoules_per_byte(table: Mapping[str, float]) -> float:
    """Energy of moving one byte to or from DRAM, in pJ."""
    return table["dram_pj_per_32_bits"] * _BITS_PER_BYTE / 32


def sram_picojoules_per_byte(table: Mapping[str, float]) -> float:
    """Energy of moving one byte to or from on-chip SRAM, in pJ."""
    return table["sram_pj_per_64_bits"] * _BITS_PER_BYTE / 64


def split_by_level(operand_bytes: tuple[int, ...], capacity_bytes: float) -> tuple[int, int]:
    """(SRAM bytes, DRAM bytes) of one operator's operands, sorted ascending by size.

    Smallest first, operands stay on chip while their running total fits ``capacity_bytes``;
    every later (larger) operand moves to and from DRAM.
    """
    on_chip = 0
    for index, size in enumerate(operand_bytes):
        if on_chip + size > capacity_bytes:
            return on_chip, sum(operand_bytes[index:])
        on_chip += size
    return on_chip, 0


def uncounted_warning(reading: Reading) -> str | None:
    """``compute not counted: 12 calls of aten.xxx, ...`` for a counted reading that has
    operators without a formula; ``None`` when everything was counted."""
    uncounted = reading.details.get("uncounted_operators") if reading.details else None
    if not uncounted:
        return None
    listed = ", ".join(
        f"{calls} call{'s' if calls != 1 else ''} of {name}"
        for name, calls in sorted(uncounted.items(), key=lambda item: (-item[1], item[0]))
    )
    return (
        f"compute not counted: {listed} (no MAC formula; their bytes are counted, their "
        f"arithmetic is not)"
    )


class _Entry:
    """What one operator call with given shapes and dtypes counts; cached and shared."""

    __slots__ = ("bytes_by_dtype", "flops", "name", "operand_bytes", "precision", "uncounted")

    def __init__(
        self,
        name: str,
        precision: str,
        flops: int,
        operand_bytes: tuple[int, ...],
        bytes_by_dtype: tuple[tuple[Any, int], ...],
        uncounted: bool,
    ) -> None:
        self.name = name
        self.precision = precision
        self.flops = flops
        self.operand_bytes = operand_bytes
        self.bytes_by_dtype = bytes_by_dtype
        self.uncounted = uncounted


class _Tally:
    """What one window counted: calls per (entry[, module]) plus calls that moved nothing."""

    __slots__ = ("calls", "passthrough_calls")

    def __init__(self) -> None:
        self.calls: dict[Any, int] = {}
        self.passthrough_calls = 0


_CACHE_LIMIT = 200_000
"""Distinct (operator, shapes, dtypes) entries kept across windows before the cache restarts."""

_MEMORY_ONLY_WORDS = (
    "norm",
    "pool",
    "softmax",
    "dropout",
    "loss",
    "embedding",
    "index",
    "gather",
    "scatter",
    "cat",
    "stack",
    "split",
    "chunk",
    "pad",
    "copy",
    "clone",
    "fill",
    "zero",
    "ones",
    "full",
    "empty",
    "arange",
    "rand",
    "bernoulli",
    "normal",
    "uniform",
    "where",
    "masked",
    "select",
    "slice",
    "sort",
    "topk",
    "_foreach_",
    "threshold",
    "upsample",
    "grid_sampler",
    "roll",
    "flip",
    "repeat",
    "tile",
    "expand",
    "permute",
    "lift",
    "alias",
    "scalar",
    "item",
    "_to_",
    "to_copy",
    "set_",
    "resize",
    "as_strided",
    "nonzero",
    "unique",
    "one_hot",
    "argmax",
    "argmin",
    "max",
    "min",
    "cumsum",
    "cumprod",
    "sum",
    "mean",
    "var",
    "std",
    "any",
    "all",
    "sign",
    "clamp",
    "clip",
    "quantize",
    "int_repr",
    "q_scale",
    "q_zero_point",
    "q_per_channel",
    "equal",
    "is_",
    "isin",
    "bucketize",
    "searchsorted",
    "histc",
    "bincount",
    "assert",
    "linspace",
    "logspace",
    "tril",
    "triu",
    "diag",
    "eye",
    "detach",
    "unfold",
    "im2col",
    "col2im",
    "pixel_shuffle",
    "pixel_unshuffle",
    "channel_shuffle",
    "transpose",
    "contiguous",
    "view",
    "reshape",
    "squeeze",
    "flatten",
    "narrow",
    "prod",
    "amax",
    "amin",
    "aminmax",
    "logsumexp",
    "count_nonzero",
    "mode",
    "median",
    "kthvalue",
    "nan",
    "fused_moving_avg",
    "_local_scalar_dense",
    "sym_",
    "_make_",
    "_unsafe",
    "_fused_dropout",
    "_masked",
    "_reshape",
    "_pack",
    "_pad",
    "_cudnn_init_dropout_state",
    "_has_compatible",
    "relu",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "silu",
    "gelu",
    "sigmoid",
    "tanh",
    "elu",
    "mish",
    "softplus",
    "shrink",
    "prelu",
    "glu",
    "logit",
    "_thnn_fused",
    "_fused_sgd",
    "_fused_adam",
    "_fused_adagrad",
    "record_stream",
    "_chunk",
    "new_",
    "_conj",
    "_neg_view",
    "_efficientzerotensor",
    "_weight_norm_interface",
    "check_errors",
    "_nested_tensor_from",
    "_nested_from_padded",
    "_nested_tensor_size",
    "_nested_tensor_strides",
    "_nested_tensor_storage_offsets",
    "_nested_get_",
)
"""Words of operator names that move data (or do O(1) arithmetic per element) but do no
multiply-accumulates worth a formula: charged for their bytes only, never listed as uncounted."""

_MEMORY_ONLY_NAMES = frozenset(
    {
        "floor_divide",
        "floor_divide_",
        "rsub",
        "complex",
        "polar",
        "take",
        "put",
        "put_",
        "rot90",
        "trace",
        "dist",
        "linalg_cross",
        "lu_unpack",
        "cauchy_",
        "exponential_",
        "geometric_",
        "multinomial",
        "hash_tensor",
        "histogram",
        "_histogramdd_bin_edges",
        "_histogramdd_from_bin_cts",
        "_histogramdd_from_bin_tensors",
        "segment_reduce",
        "binary_cross_entropy",
        "binary_cross_entropy_backward",
        "_segment_reduce_backward",
        "sparse_mask",
    }
)
"""Whole names of operators that are element-wise, reductions, sampling or data movement but
carry no tag that says so (found running torch's operator database under counted)."""

_COMPUTE_WORDS = ("matmul", "attention", "dot_product", "householder")
"""Words that mark a name as doing multiply-accumulates (as does any ``_``-separated part
ending in ``mm``: ``bmm``, ``_int_mm``) even where it also holds a memory-only word
(``_weight_int4pack_mm_with_scales_and_zeros``, ``_flash_attention_forward_no_dropout_inplace``):
such an operator is counted by a formula or named as uncounted, never charged as data movement."""


_QUANTIZED_RNNS = ("quantized_lstm", "quantized_gru")
"""``quantize_dynamic``'s recurrent layers: one operator runs every layer and direction with
packed int8 (or fp16) weights inside ``CellParamsBase`` objects."""


def _functional_twin(func: Any) -> Any | None:
    """The functional ``aten`` packet of an in-place ``aten`` operator (``addmm`` for
    ``addmm_``), which does the same work; None for any other operator."""
    import torch

    name = func._overloadpacket.__name__
    if func.namespace != "aten" or not name.endswith("_"):
        return None
    return getattr(torch.ops.aten, name[:-1], None)


def _is_memory_only(func: Any) -> bool:
    """Whether ``func`` is element-wise, a reduction, a copy or data movement (bytes only)."""
    import torch

    tags = func.tags
    if torch.Tag.pointwise in tags or torch.Tag.reduction in tags or torch.Tag.view_copy in tags:
        return True
    if func.namespace in ("quantized_decomposed", "prim", "prims", "profiler", "debugprims"):
        return True
    name = func._overloadpacket.__name__
    if name in _MEMORY_ONLY_NAMES:
        return True
    if name.startswith((*_QUANTIZED_RNNS, "quantized_rnn")):
        return False  # recurrent layers with quantized weights, not a quantize step
    if (
        name == "_trilinear"
        or any(word in name for word in _COMPUTE_WORDS)
        or any(part.endswith("mm") for part in name.split("_"))
    ):
        return False
    if func.namespace == "quantized" and not name.startswith(("conv", "linear", "matmul")):
        return True
    functional = _functional_twin(func)  # in place: as its functional twin
    if functional is not None and "default" in functional.overloads():
        twin_tags = functional.default.tags
        if torch.Tag.pointwise in twin_tags or torch.Tag.reduction in twin_tags:
            return True
    return any(word in name for word in _MEMORY_ONLY_WORDS)


def _product(values: Any) -> int:
    return math.prod(int(value) for value in values)


def _attention_flops(batch_heads: int, queries: int, keys: int, dim_qk: int, dim_v: int) -> int:
    """FLOPs of softmax(Q Kᵀ) V: Q Kᵀ plus the weighted sum of values, 2 FLOPs per MAC."""
    return 2 * batch_heads * queries * keys * (dim_qk + dim_v)


def _sdpa_forward(a: Mapping[str, Any], out: Any) -> int:
    query, key, value = a["query"], a["key"], a["value"]
    return _attention_flops(
        _product(query.shape[:-2]), query.shape[-2], key.shape[-2], query.shape[-1], value.shape[-1]
    )


def _batch_heads_rows_columns(shape: Any) -> list[int]:
    """``shape`` as [batch, heads, rows, columns], the dimensions before the heads folded into
    the batch: grouped-query attention keeps fewer key/value heads than query heads."""
    leading = [int(size) for size in shape[:-2]] or [1]
    return [_product(leading[:-1]), leading[-1], int(shape[-2]), int(shape[-1])]


def _sdpa_backward(a: Mapping[str, Any], out: Any) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return int(
        sdpa_backward_flop_count(
            _batch_heads_rows_columns(a["grad_out"].shape),
            _batch_heads_rows_columns(a["query"].shape),
            _batch_heads_rows_columns(a["key"].shape),
            _batch_heads_rows_columns(a["value"].shape),
        )
    )


def _flex_attention_backward(a: Mapping[str, Any], out: Any) -> int:
    grad_out = a["grad_out"] if a.get("grad_out") is not None else a["out"]
    return _sdpa_backward({**a, "grad_out": grad_out}, out)


def _projected_attention_flops(query: Any, key: Any, embed_dim: int) -> int:
    """Multi-head attention with input and output projections (embed_dim × embed_dim each)."""
    sequences = query.unbind() if query.is_nested else [query]
    keys = key.unbind() if key.is_nested else [key]
    flops = 0
    for query_part, key_part in zip(sequences, keys, strict=True):
        queries = query_part.shape[-2] if query_part.dim() >= 2 else 1
        key_count = key_part.shape[-2] if key_part.dim() >= 2 else 1
        query_tokens = query_part.numel() // embed_dim
        key_tokens = key_part.numel() // embed_dim
        batch = query_tokens // max(queries, 1)
        projections = 2 * embed_dim * embed_dim * (2 * query_tokens + 2 * key_tokens)
        flops += projections + _attention_flops(batch, queries, key_count, embed_dim, embed_dim)
    return flops


def _native_mha(a: Mapping[str, Any], out: Any) -> int:
    return _projected_attention_flops(a["query"], a["key"], int(a["embed_dim"]))


def _encoder_layer(a: Mapping[str, Any], out: Any) -> int:
    source = a["src"]
    embed_dim = int(a["embed_dim"])
    tokens = sum(part.numel() for part in source.unbind()) if source.is_nested else source.numel()
    tokens //= embed_dim
    feed_forward = 2 * tokens * (a["ffn_weight_1"].numel() + a["ffn_weight_2"].numel())
    return _projected_attention_flops(source, source, embed_dim) + feed_forward


def _rnn_tokens(inputs: Any, batch_sizes: Any) -> int:
    """Time steps × batch of a recurrent layer's input (packed: its first dimension)."""
    if batch_sizes is not None and len(batch_sizes) > 0:
        return int(inputs.shape[0])
    return inputs.numel() // int(inputs.shape[-1])


def _mkldnn_rnn_layer(a: Mapping[str, Any], out: Any) -> int:
    weights = a["weight0"].numel() + a["weight1"].numel()
    return 2 * _rnn_tokens(a["input"], a.get("batch_sizes")) * weights


def _mkldnn_rnn_layer_backward(a: Mapping[str, Any], out: Any) -> int:
    weights = a["weight1"].numel() + a["weight2"].numel()
    # gradient of the inputs and of the weights: twice the forward's MACs
    return 4 * _rnn_tokens(a["input"], a.get("batch_sizes")) * weights


def _fused_rnn(a: Mapping[str, Any], out: Any, factor: int) -> int:
    """cuDNN/MIOpen run every layer and direction at once; each layer sees every token."""
    weights = sum(weight.numel() for weight in a["weight"] if weight.dim() == 2)
    return 2 * factor * _rnn_tokens(a["input"], a.get("batch_sizes")) * weights


def _addr(a: Mapping[str, Any], out: Any) -> int:
    """Outer product added to a matrix: one MAC per output element."""
    return 2 * out.numel()


def _sparse_rows_times_dense(a: Mapping[str, Any], out: Any) -> int:
    """A sparse matrix times a dense one: one MAC per stored element and output column."""
    return 2 * int(a["self"]._nnz()) * int(a["other"].shape[-1])


def _sampled_addmm(a: Mapping[str, Any], out: Any) -> int:
    """``mat1 @ mat2`` computed only where the sparse ``self`` stores an element."""
    return 2 * int(a["self"]._nnz()) * int(a["mat1"].shape[-1])


def _mv(a: Mapping[str, Any], out: Any) -> int:
    return 2 * a["self"].numel()


def _addmv(a: Mapping[str, Any], out: Any) -> int:
    return 2 * a["mat"].numel()


def _dot(a: Mapping[str, Any], out: Any) -> int:
    return 2 * a["self"].numel()


def _addbmm(a: Mapping[str, Any], out: Any) -> int:
    batch1, batch2 = a["batch1"], a["batch2"]
    return 2 * batch1.numel() * batch2.shape[-1]


def _addmm_like(a: Mapping[str, Any], out: Any) -> int:
    return 2 * a["mat1"].numel() * a["mat2"].shape[-1]


def _int_mm(a: Mapping[str, Any], out: Any) -> int:
    return 2 * a["self"].numel() * a["mat2"].shape[-1]


def _cdist(a: Mapping[str, Any], out: Any) -> int:
    return 2 * out.numel() * a["x1"].shape[-1]


def _cdist_backward(a: Mapping[str, Any], out: Any) -> int:
    """The gradient of ``x1``: one MAC per pair and dimension, as the forward."""
    return 2 * a["grad_output"].numel() * a["x1"].shape[-1]


def _euclidean_dist(a: Mapping[str, Any], out: Any) -> int:
    """``torch.cdist``'s matmul path: ‖x‖² + ‖y‖² − 2 x yᵀ as one GEMM of padded operands.

    The kernel appends the squared norm and a column of ones to each side, so its GEMM is
    ``dim + 2`` wide (``batch × n × m × (dim + 2)`` MACs); the squared norms cost one MAC per
    element of each input (``batch × (n + m) × dim``).
    """
    x1, x2 = a["x1"], a["x2"]
    gemm = out.numel() * (int(x1.shape[-1]) + 2)
    norms = x1.numel() + x2.numel()
    return 2 * (gemm + norms)


def _trilinear(a: Mapping[str, Any], out: Any) -> int:
    """``nn.Bilinear``'s kernel: one MAC per term of the three inputs' broadcast product
    (``batch × out × in1 × in2`` for a bilinear layer) before the sum over ``sumdim``."""
    import torch

    shapes = []
    for tensor, expanded in (("i1", "expand1"), ("i2", "expand2"), ("i3", "expand3")):
        shape = [int(size) for size in a[tensor].shape]
        for dim in sorted(a[expanded]):
            shape.insert(dim, 1)
        shapes.append(shape)
    return 2 * _product(torch.broadcast_shapes(*shapes))


def _by_inner_dimension(operand: str) -> Callable[[Mapping[str, Any], Any], int]:
    """A GEMM (packed or quantized weights, nested inputs): one MAC per output element and
    element of ``operand``'s last (inner) dimension."""

    def flops(a: Mapping[str, Any], out: Any) -> int:
        return 2 * out.numel() * int(a[operand].shape[-1])

    return flops


def _dyn_quant_matmul_4bit(a: Mapping[str, Any], out: Any) -> int:
    return 2 * out.numel() * int(a["in_features"])


def _grouped_mm(a: Mapping[str, Any], out: Any) -> int:
    """One GEMM per group; with two 2-D operands the groups split the inner dimension."""
    first, second = a["self"], a["mat2"]
    if first.dim() == 2 and second.dim() == 2:
        return 2 * int(first.shape[0]) * int(first.shape[1]) * int(second.shape[1])
    return 2 * out.numel() * int(first.shape[-1])


def _pdist(a: Mapping[str, Any], out: Any) -> int:
    """One MAC per pair of rows and dimension (the gradient too)."""
    pairs = out.numel() if "grad_output" not in a else a["grad_output"].numel()
    return 2 * pairs * int(a["self"].shape[-1])


def _flash_forward_into(a: Mapping[str, Any], out: Any) -> int:
    """``_flash_attention_forward`` writing into a given output: counted as that kernel."""
    import torch
    from torch.utils.flop_counter import flop_registry

    formula = flop_registry[torch.ops.aten._flash_attention_forward]
    return int(
        formula(
            a["query"],
            a["key"],
            a["value"],
            a.get("cum_seq_q"),
            a.get("cum_seq_k"),
            a["max_q"],
            a["max_k"],
            out_val=a["out"],
        )
    )


def _convolution_backward(a: Mapping[str, Any], out: Any) -> int:
    """The input's and the weight's gradients each cost the forward convolution's MACs.

    ``torch.utils.flop_counter`` counts the weight gradient without dividing by ``groups``,
    so a depthwise convolution's backward came to ``1 + groups`` times its forward."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(
        list(a["input"].shape),
        list(a["weight"].shape),
        list(a["grad_output"].shape),
        bool(a["transposed"]),
    )
    mask = a["output_mask"]
    return int(forward) * (int(bool(mask[0])) + int(bool(mask[1])))


def _onednn_conv(a: Mapping[str, Any], out: Any) -> int:
    from torch.utils.flop_counter import conv_flop_count

    result = out[0] if isinstance(out, (tuple, list)) else out
    return int(conv_flop_count(list(a["qx"].shape), list(a["qw"].shape), list(result.shape), False))


def _onednn_linear(a: Mapping[str, Any], out: Any) -> int:
    result = out[0] if isinstance(out, (tuple, list)) else out
    x = a["qx"] if "qx" in a else a["x"]
    return 2 * result.numel() * int(x.shape[-1])


_FORMULAS: Mapping[str, tuple[Callable[[Mapping[str, Any], Any], int], tuple[str, ...]]] = {
    "aten._scaled_dot_product_flash_attention_for_cpu": (_sdpa_forward, ("query", "key")),
    "aten._scaled_dot_product_flash_attention_for_cpu_backward": (
        _sdpa_backward,
        ("query", "key"),
    ),
    "aten._scaled_dot_product_attention_math_for_mps": (_sdpa_forward, ("query", "key")),
    "aten._scaled_dot_product_fused_attention_overrideable": (_sdpa_forward, ("query", "key")),
    "aten._scaled_dot_product_fused_attention_overrideable_backward": (
        _sdpa_backward,
        ("query", "key"),
    ),
    "aten._flash_attention_forward_no_dropout_inplace": (_flash_forward_into, ("query", "key")),
    "aten._native_multi_head_attention": (_native_mha, ("query", "qkv_weight")),
    "aten._transformer_encoder_layer_fwd": (_encoder_layer, ("src", "qkv_weight")),
    "aten.mkldnn_rnn_layer": (_mkldnn_rnn_layer, ("input", "weight0")),
    "aten.mkldnn_rnn_layer_backward": (_mkldnn_rnn_layer_backward, ("input", "weight1")),
    "aten._cudnn_rnn": (functools.partial(_fused_rnn, factor=1), ("input",)),
    "aten._cudnn_rnn_backward": (functools.partial(_fused_rnn, factor=2), ("input",)),
    "aten.miopen_rnn": (functools.partial(_fused_rnn, factor=1), ("input",)),
    "aten.miopen_rnn_backward": (functools.partial(_fused_rnn, factor=2), ("input",)),
    "aten.mv": (_mv, ("self", "vec")),
    "aten.addmv": (_addmv, ("mat", "vec")),
    "aten.dot": (_dot, ("self", "tensor")),
    "aten.vdot": (_dot, ("self", "other")),
    "aten.addbmm": (_addbmm, ("batch1", "batch2")),
    "aten._addmm_activation": (_addmm_like, ("mat1", "mat2")),
    "aten._int_mm": (_int_mm, ("self", "mat2")),
    "aten.convolution_backward": (_convolution_backward, ("grad_output", "weight")),
    "aten._trilinear": (_trilinear, ("i1", "i2")),
    "aten._weight_int8pack_mm": (_by_inner_dimension("self"), ("self",)),
    "aten._weight_int4pack_mm": (_by_inner_dimension("self"), ("self",)),
    "aten._weight_int4pack_mm_for_cpu": (_by_inner_dimension("self"), ("self",)),
    "aten._weight_int4pack_mm_with_scales_and_zeros": (_by_inner_dimension("self"), ("self",)),
    "aten._mixed_dtypes_linear": (_by_inner_dimension("input"), ("input",)),
    "quantized.int4mm_packed_weight_cpu": (_by_inner_dimension("self"), ("self",)),
    "aten._dyn_quant_matmul_4bit": (_dyn_quant_matmul_4bit, ("inp",)),
    "aten.addr": (_addr, ("vec1", "vec2")),
    "aten._scaled_mm_v2": (_by_inner_dimension("self"), ("self", "mat2")),
    "aten._scaled_grouped_mm_v2": (_grouped_mm, ("self", "mat2")),
    "aten._sparse_mm_reduce_impl": (_sparse_rows_times_dense, ("other",)),
    "aten.sparse_sampled_addmm": (_sampled_addmm, ("mat1", "mat2")),
    "aten._grouped_mm": (_grouped_mm, ("self", "mat2")),
    "aten._scaled_grouped_mm": (_grouped_mm, ("self", "mat2")),
    "aten._pdist_forward": (_pdist, ("self",)),
    "aten._pdist_backward": (_pdist, ("self",)),
    "aten._cdist_forward": (_cdist, ("x1", "x2")),
    "aten._cdist_backward": (_cdist_backward, ("x1", "x2")),
    "aten._euclidean_dist": (_euclidean_dist, ("x1", "x2")),
    "onednn.qconv_pointwise": (_onednn_conv, ("qx",)),
    "onednn.qconv2d_pointwise": (_onednn_conv, ("qx",)),
    "onednn.qlinear_pointwise": (_onednn_linear, ("qx",)),
    "onednn.linear_dynamic_fp16": (_onednn_linear, ("x",)),
    "onednn.linear_relu_dynamic_fp16": (_onednn_linear, ("x",)),
}
"""Formulas (FLOPs, 2 per MAC) for operators ``torch.utils.flop_counter`` does not know, with
the arguments whose dtype (and dequantize origin) sets the precision."""

_NESTED_FORMULAS: Mapping[str, tuple[Callable[[Mapping[str, Any], Any], int], tuple[str, ...]]] = {
    "aten.linear": (_by_inner_dimension("weight"), ("input", "weight")),
    "aten.matmul": (_by_inner_dimension("self"), ("self", "other")),
}
"""Formulas for composite operators that a nested (strided) tensor runs with a kernel of its
own instead of their dense decomposition."""

_REGISTRY_PRECISION_OPERANDS: Mapping[str, tuple[int, ...]] = {
    "aten.addmm": (1, 2),
    "aten.baddbmm": (1, 2),
}
"""Positions of the multiplied operands where they are not the first two tensors."""

_REAL_MACS_PER_COMPLEX_MAC = 4
"""(a + bi)(c + di): four real multiplications, counted at the real part's precision."""

_PRECISION_OVERRIDES: Mapping[str, str] = {
    "onednn.linear_dynamic_fp16": "fp16",
    "onednn.linear_relu_dynamic_fp16": "fp16",
    "aten._dyn_quant_matmul_4bit": "int8",
}


_HIGHER_ORDER_FORMULAS: Mapping[
    str, tuple[Callable[[Mapping[str, Any], Any], int], tuple[str, ...]]
] = {
    "flex_attention": (_sdpa_forward, ("query", "key", "value")),
    "flex_attention_backward": (
        _flex_attention_backward,
        ("query", "key", "value", "out", "logsumexp", "grad_out"),
    ),
}
"""Higher-order operators counted by a formula: (formula, names of the leading arguments).
flex_attention as dense attention, the upper bound of a block-sparse kernel's work."""


class _OperatorPlan:
    """How one operator overload is counted; worked out once per overload."""

    __slots__ = (
        "argument_names",
        "cacheable",
        "decomposable",
        "formula",
        "marks_quantized",
        "memory_only",
        "moves_bytes",
        "name",
        "nested_plan",
        "packed_family",
        "passthrough",
        "precision_operands",
        "registry_formula",
    )

    def __init__(self, func: Any, registry: Mapping[Any, Any]) -> None:
        import torch

        packet = func._overloadpacket
        self.name = str(packet)
        self.argument_names = tuple(argument.name for argument in func._schema.arguments)
        self.moves_bytes = not (func.is_view or func in _no_byte_operators())
        source = _formula_source(func, registry)
        custom = _FORMULAS.get(str(source))
        self.formula = custom[0] if custom else None
        self.registry_formula = None if custom else registry.get(source)
        self.packed_family = _packed_family(func)
        self.nested_plan: _OperatorPlan | None = None
        counts_macs = (
            self.registry_formula is not None
            or self.formula is not None
            or self.packed_family is not None
        )
        if custom:
            names = custom[1]
            self.precision_operands: tuple[Any, ...] = names
        else:
            self.precision_operands = _REGISTRY_PRECISION_OPERANDS.get(str(source), (0, 1))
        self.decomposable = (
            not counts_macs
            and func is not torch.ops.prim.device.default
            and (
                torch._C.DispatchKey.CompositeImplicitAutograd in func.py_kernels
                or func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd)
            )
        )
        self.memory_only = not counts_macs and _is_memory_only(func)
        self.passthrough = not counts_macs and not self.moves_bytes
        self.marks_quantized = packet.__name__.startswith("dequantize") and func.namespace in (
            "aten",
            "quantized_decomposed",
            "torchao",
        )
        self.cacheable = self.packed_family is None and not (
            torch.Tag.dynamic_output_shape in func.tags
            or torch.Tag.data_dependent_output in func.tags
        )

    @classmethod
    def for_higher_order(cls, func: Any) -> _OperatorPlan:
        """The plan of a higher-order operator (torch.cond, while_loop, scan, flex_attention):
        a formula where ``_HIGHER_ORDER_FORMULAS`` has one, its tensors' bytes, never cached."""
        plan = cls.__new__(cls)
        plan.name = f"higher_order.{func.name()}"
        formula, plan.argument_names = _HIGHER_ORDER_FORMULAS.get(func.name(), (None, ()))
        plan.formula = formula
        plan.precision_operands = plan.argument_names[:2]
        plan.registry_formula = plan.packed_family = plan.nested_plan = None
        plan.moves_bytes = True
        plan.decomposable = plan.memory_only = plan.passthrough = False
        plan.marks_quantized = plan.cacheable = False
        return plan

    def for_nested(self) -> _OperatorPlan:
        """This operator's plan for nested inputs: its nested formula, if any, instead of the
        dense decomposition (worked out once)."""
        if self.nested_plan is None:
            plan = copy.copy(self)
            plan.decomposable = False
            plan.cacheable = False
            custom = _NESTED_FORMULAS.get(self.name)
            if custom is not None:
                plan.formula, plan.precision_operands = custom
                plan.memory_only = False
            self.nested_plan = plan
        return self.nested_plan


def _formula_source(func: Any, registry: Mapping[Any, Any]) -> Any:
    """The packet whose formula counts ``func``: its own, or for an in-place operator without
    one (``addmm_``, ``baddbmm_``) its functional twin's."""
    packet = func._overloadpacket
    if packet in registry or str(packet) in _FORMULAS:
        return packet
    twin = _functional_twin(func)
    if twin is not None and (twin in registry or str(twin) in _FORMULAS):
        return twin
    return packet


def _packed_family(func: Any) -> str | None:
    """``conv``, ``conv_transpose``, ``linear``, ``linear_fp16`` or ``rnn`` for a quantized
    operator that takes packed weights; ``None`` for every other operator."""
    name = func._overloadpacket.__name__
    if func.namespace == "aten" and name in _QUANTIZED_RNNS:
        arguments = func._schema.arguments
        return "rnn" if any("CellParamsBase" in str(arg.type) for arg in arguments) else None
    if func.namespace != "quantized":
        return None
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


def _nbytes(tensor: Any) -> int:
    """Bytes a tensor holds as stored (mkldnn and nested tensors included)."""
    try:
        return int(tensor.nbytes)
    except (RuntimeError, NotImplementedError, TypeError):
        try:
            return int(tensor.numel()) * int(tensor.element_size())
        except (RuntimeError, NotImplementedError, TypeError):
            return 0


def _uses_exactly(function: Any, names: frozenset[str]) -> bool:
    """Whether ``function``'s code refers to exactly ``names``: the torch internals a quick
    copy reproduces are still the ones torch runs (another set: another version of them)."""
    code = getattr(function, "__code__", None)
    return code is not None and frozenset(code.co_names) == names


_TORCH_MODE_EXIT_NAMES = frozenset(
    {
        "__dict__",
        "get",
        "pop",
        "old_dispatch_mode_flags",
        "_is_in_torch_dispatch_mode",
        "old_non_infra_dispatch_mode_flags",
        "_is_in_non_infra_torch_dispatch_mode",
        "old_without_ignore_compile_internals_dispatch_mode_flags",
        "_is_in_any_mode_without_ignore_compile_internals",
        "set_is_in_mode_without_ignore_compile_internals",
        "_pop_mode",
    }
)
"""The names ``TorchDispatchMode.__exit__`` uses in the torch versions whose exit
``_counting_mode_class`` reproduces; another set means another exit, and torch's own is used."""


def _quick_mode_exit(mode_class: type) -> Callable[[Any, Any, Any, Any], None] | None:
    """``mode_class.__exit__`` without its lookup of a pybind enum per call, or None.

    torch's exit restores three module flags, tells C++ the last of them, and pops the mode,
    comparing the mode's dispatch key (None for counted's mode) with
    ``DispatchKey.PreDispatch`` on the way: 2 of its 3 µs, paid at every window's end. The
    quick exit does the same without that comparison, and only where torch's exit is the one
    it reproduces (its code uses exactly ``_TORCH_MODE_EXIT_NAMES``); elsewhere, None.
    """
    import torch
    import torch.utils._python_dispatch as python_dispatch

    pop_stack = getattr(torch._C, "_pop_torch_dispatch_stack", None)
    if pop_stack is None or not _uses_exactly(mode_class.__exit__, _TORCH_MODE_EXIT_NAMES):
        return None
    tell_cpp = python_dispatch.set_is_in_mode_without_ignore_compile_internals

    def __exit__(self: Any, error_type: Any, error: Any, traceback: Any) -> None:
        python_dispatch._is_in_torch_dispatch_mode = self.old_dispatch_mode_flags.pop()
        python_dispatch._is_in_non_infra_torch_dispatch_mode = (
            self.old_non_infra_dispatch_mode_flags.pop()
        )
        without_ignore = self.old_without_ignore_compile_internals_dispatch_mode_flags.pop()
        python_dispatch._is_in_any_mode_without_ignore_compile_internals = without_ignore
        tell_cpp(without_ignore)
        pop_stack(None)

    return __exit__


@functools.cache
def _counting_mode_class() -> type:
    """The dispatch mode class, defined on first use so that importing this module stays cheap."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import conv_flop_count, flop_registry

    entries: dict[Any, _Entry] = {}
    tensor_type = torch.Tensor
    op_overload = torch._ops.OpOverload
    higher_order_operator = torch._ops.HigherOrderOperator

    def _tensors(values: Any) -> Iterator[torch.Tensor]:
        for value in values:
            if isinstance(value, tensor_type):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from _tensors(value)

    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    tracing_types = (FakeTensor, FunctionalTensor)
    disabled_dispatch = torch._C._disabled_torch_dispatch_impl

    def _defers_to_subclass(types: Any) -> bool:
        """Whether a tensor subclass among the arguments (a nested jagged tensor, a quantized
        weight wrapper) should run the operator: it then calls operators on its plain inner
        tensors with this mode active, and those are what gets counted. Tracing subclasses
        (fake, functional) are left to the tracing check."""
        return any(
            subclass.__torch_dispatch__ is not disabled_dispatch
            and not issubclass(subclass, tracing_types)
            for subclass in types
        )

    symbolic_int = torch.SymInt

    def _traced(out: Any) -> bool:
        """Whether ``out`` comes from tracing (fake tensors, symbolic shapes), not from work."""
        first = out[0] if isinstance(out, (list, tuple)) and out else out
        if type(first) is tensor_type or not isinstance(first, tensor_type):
            return False  # the common case, one type check: a plain tensor holds real sizes
        return isinstance(first, FakeTensor) or any(
            isinstance(size, symbolic_int) for size in first.shape
        )

    def _signature(values: Any) -> tuple[Any, ...]:
        """Shapes and dtypes of tensors, other arguments as given: the cache key's body."""
        key = []
        for value in values:
            if isinstance(value, tensor_type):
                key.append((value.shape, value.dtype))
            elif isinstance(value, (list, tuple)):
                key.append(_signature(value))
            else:
                key.append(value)
        return tuple(key)

    class CountingMode(TorchDispatchMode):
        """Runs each operator unchanged and adds one call of its cached entry to the tally."""

        supports_higher_order_operators = True

        def __init__(self) -> None:
            super().__init__()
            self.tally = _Tally()
            self.packed_weights: dict[int, tuple[Any, tuple[int, ...], list[Any]]] = {}
            self.quantized_seen = False
            self.module_path: Callable[[], str] | None = None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if types and _defers_to_subclass(types):
                return NotImplemented
            kwargs = kwargs or {}
            plan = getattr(func, "_pytest_energy_plan", None)  # faster than hashing func
            if plan is None:
                if isinstance(func, higher_order_operator):
                    return self._run_higher_order(func, args, kwargs)
                if not isinstance(func, op_overload):
                    return func(*args, **kwargs)
                plan = _OperatorPlan(func, flop_registry)
                func._pytest_energy_plan = plan
            if plan.passthrough:
                out = func(*args, **kwargs)
                self.tally.passthrough_calls += 1
                if self.quantized_seen and args:
                    _carry_mark(args[0], out)
                return out
            if plan.decomposable:
                if any(tensor.is_nested for tensor in _tensors(args)):
                    plan = plan.for_nested()  # its own kernel: the dense decomposition fails
                else:
                    with self:
                        result = func.decompose(*args, **kwargs)
                    if result is not NotImplemented:
                        return result
            out = func(*args, **kwargs)
            if _traced(out):
                return out  # torch.export / fake tracing: shapes, not work, and never specialised
            if plan.marks_quantized:
                self._mark_dequantized(args, out)
            if plan.cacheable:
                key: Any
                try:
                    key = (
                        id(plan),
                        _signature(args),
                        _signature(kwargs.items()) if kwargs else (),
                    )
                    if self.quantized_seen and not plan.memory_only:
                        key = (key, _marks(args, kwargs))
                    entry = entries.get(key)
                except (TypeError, RuntimeError):
                    # an argument that cannot be hashed, or a nested tensor (it has no single
                    # shape): counted without caching
                    entry = key = None
                if entry is None:
                    entry = self._entry(plan, args, kwargs, out)
                    if key is not None:
                        if len(entries) >= _CACHE_LIMIT:
                            entries.clear()
                        entries[key] = entry
            else:
                entry = self._entry(plan, args, kwargs, out)
            calls = self.tally.calls
            slot = entry if self.module_path is None else (entry, self.module_path())
            calls[slot] = calls.get(slot, 0) + 1
            return out

        def _run_higher_order(self, func: Any, args: Any, kwargs: Any) -> Any:
            """Run a higher-order operator: one with a formula is counted by it; the functions
            given to the others (branches, loop bodies) run with this mode active, so what
            they run is counted (the operator's own glue, stacking outputs, is not); one
            given no function is named as uncounted."""
            plan = _OperatorPlan.for_higher_order(func)
            if plan.formula is None:
                functions: list[Any] = []
                args = self._counting_functions(args, functions)
                kwargs = {
                    name: self._counting_functions(value, functions)
                    for name, value in kwargs.items()
                }
                if functions:
                    return func(*args, **kwargs)
            out = func(*args, **kwargs)
            if not _traced(out):
                entry = self._entry(plan, args, kwargs, out)
                calls = self.tally.calls
                slot = entry if self.module_path is None else (entry, self.module_path())
                calls[slot] = calls.get(slot, 0) + 1
            return out

        def _counting_functions(self, value: Any, wrapped: list[Any]) -> Any:
            """``value`` with every Python function in it run under this mode (appended to
            ``wrapped``); operators and classes stay as they are."""
            if isinstance(value, (list, tuple)):
                return type(value)(self._counting_functions(item, wrapped) for item in value)
            if not callable(value) or isinstance(
                value, (type, tensor_type, op_overload, higher_order_operator)
            ):
                return value
            mode = self

            def counted_function(*args: Any, **kwargs: Any) -> Any:
                with mode:
                    return value(*args, **kwargs)

            wrapped.append(value)
            return counted_function

        def _mark_dequantized(self, args: Any, out: Any) -> None:
            source = next(_tensors(args), None)
            if source is None or not isinstance(out, tensor_type):
                return
            precision = _precision(source.dtype)
            if precision == "int8" and _precision(out.dtype) != precision:
                setattr(out, _QUANTIZED_MARK, precision)
                self.quantized_seen = True

        def _entry(self, plan: _OperatorPlan, args: Any, kwargs: Any, out: Any) -> _Entry:
            inputs = list(_tensors(args)) + list(_tensors(kwargs.values()))
            operands = [*inputs, *_tensors((out,))] if plan.moves_bytes else []
            sizes = [(tensor.dtype, _nbytes(tensor)) for tensor in operands]
            flops, precision, failed = 0, "fp32", None
            if plan.packed_family is not None:
                flops, precision, packed_sizes = self._count_packed(plan, args, kwargs, out)
                sizes.extend(packed_sizes)
            elif plan.registry_formula is not None or plan.formula is not None:
                try:
                    flops = _formula_flops(plan, args, kwargs, out)
                except Exception as error:
                    by_component = _flops_by_component(plan, args, kwargs, out)
                    if by_component is None:
                        # named, never a quiet zero, and the user's code runs on
                        failed = f"{plan.name} (its MAC formula raised {type(error).__name__})"
                    flops = by_component or 0
                precision = self._precision_of(plan, args, kwargs, inputs)
                if any(tensor.is_complex() for tensor in inputs):
                    flops *= _REAL_MACS_PER_COMPLEX_MAC
            by_dtype: dict[Any, int] = {}
            for dtype, size in sizes:
                by_dtype[dtype] = by_dtype.get(dtype, 0) + size
            return _Entry(
                name=failed or plan.name,
                precision=precision,
                flops=flops,
                operand_bytes=tuple(sorted(size for _, size in sizes)),
                bytes_by_dtype=tuple(by_dtype.items()),
                uncounted=failed is not None
                or (
                    not plan.memory_only
                    and not flops
                    and bool(inputs)
                    and plan.registry_formula is None
                    and plan.formula is None
                    and plan.packed_family is None
                ),
            )

        def _precision_of(
            self, plan: _OperatorPlan, args: Any, kwargs: Any, inputs: list[Any]
        ) -> str:
            if plan.name in _PRECISION_OVERRIDES:
                return _PRECISION_OVERRIDES[plan.name]
            operands = []
            for position in plan.precision_operands:
                if isinstance(position, int):
                    value = args[position] if position < len(args) else None
                else:
                    value = _argument(plan, position, args, kwargs)
                if isinstance(value, tensor_type):
                    operands.append(value)
            if not operands:
                operands = inputs[:1]
            if not operands:
                return "fp32"
            if self.quantized_seen:
                marks = [getattr(tensor, _QUANTIZED_MARK, None) for tensor in operands]
                if len(operands) >= 2 and all(marks) and len(set(marks)) == 1:
                    return marks[0]
            return _precision(operands[0].dtype)

        def _packed_weight(
            self, packed: Any, fp16_weights: bool
        ) -> tuple[Any, tuple[int, ...], list[Any]]:
            """``_unpacked_sizes`` of ``packed``, unpacked once per window."""
            cached = self.packed_weights.get(id(packed))
            if cached is None:
                cached = self.packed_weights[id(packed)] = _unpacked_sizes(packed, fp16_weights)
            return cached

        def _count_packed(
            self, plan: _OperatorPlan, args: Any, kwargs: Any, out: Any
        ) -> tuple[int, str, list[Any]]:
            if plan.packed_family == "rnn":
                return self._count_quantized_rnn(plan, args, kwargs)
            packed = next(arg for arg in args if isinstance(arg, torch.ScriptObject))
            x = next(_tensors(args))
            _, weight_shape, bytes_by_dtype = self._packed_weight(
                packed, fp16_weights=plan.packed_family == "linear_fp16"
            )
            if plan.packed_family.startswith("linear"):
                flops = 2 * out.numel() * weight_shape[1]
            else:
                transposed = plan.packed_family == "conv_transpose"
                flops = conv_flop_count(
                    list(x.shape), list(weight_shape), list(out.shape), transposed
                )
            precision = "fp32" if plan.packed_family == "linear_fp16" else "int8"
            return int(flops), precision, list(bytes_by_dtype)

        def _count_quantized_rnn(
            self, plan: _OperatorPlan, args: Any, kwargs: Any
        ) -> tuple[int, str, list[Any]]:
            """Every layer and direction sees every token: one MAC per token and element of
            each cell's input-to-hidden and hidden-to-hidden weights."""
            inputs = _argument(plan, "input", args, kwargs)
            if inputs is None:  # the packed-sequence overload
                inputs = _argument(plan, "data", args, kwargs)
            tokens = _rnn_tokens(inputs, _argument(plan, "batch_sizes", args, kwargs))
            cells = _argument(plan, "params", args, kwargs)
            macs, kinds, sizes = 0, set(), []
            for cell in cells:
                kind, _, _, _, linears = cell.__getstate__()[0]
                kinds.add(kind)
                for linear in linears:
                    _, weight_shape, bytes_by_dtype = self._packed_weight(
                        linear, fp16_weights=kind == "quantized_fp16"
                    )
                    macs += tokens * weight_shape[0] * weight_shape[1]
                    sizes.extend(bytes_by_dtype)
            precision = "int8" if kinds == {"quantized_dynamic"} else "fp32"
            return 2 * macs, precision, sizes

    def _formula_flops(plan: _OperatorPlan, args: Any, kwargs: Any, out: Any) -> int:
        if plan.registry_formula is not None:
            return int(plan.registry_formula(*args, **kwargs, out_val=out))
        bound = dict(zip(plan.argument_names, args, strict=False))
        bound.update(kwargs)
        return int(plan.formula(bound, out))

    def _flops_by_component(plan: _OperatorPlan, args: Any, kwargs: Any, out: Any) -> int | None:
        """A formula that needs one shape, applied to each sequence of nested arguments (each
        as a batch of one) and summed; None when no argument is nested or that fails too."""
        values = (args, tuple(kwargs.values()), out)
        nested = [tensor for tensor in _tensors(values) if tensor.is_nested]
        if not nested:
            return None
        try:
            parts = {id(tensor): tensor.unbind() for tensor in nested}

            def component(value: Any, index: int) -> Any:
                if isinstance(value, tensor_type) and id(value) in parts:
                    return parts[id(value)][index].unsqueeze(0)
                if isinstance(value, (list, tuple)):
                    return type(value)(component(item, index) for item in value)
                return value

            return sum(
                _formula_flops(
                    plan,
                    component(args, index),
                    {name: component(value, index) for name, value in kwargs.items()},
                    component(out, index),
                )
                for index in range(len(parts[id(nested[0])]))
            )
        except Exception:
            return None

    def _argument(plan: _OperatorPlan, name: str, args: Any, kwargs: Any) -> Any:
        if name in kwargs:
            return kwargs[name]
        try:
            position = plan.argument_names.index(name)
        except ValueError:
            return None
        return args[position] if position < len(args) else None

    def _marks(args: Any, kwargs: Any) -> tuple[Any, ...]:
        return tuple(
            getattr(tensor, _QUANTIZED_MARK, None) for tensor in _tensors((*args, *kwargs.values()))
        )

    def _carry_mark(source: Any, out: Any) -> None:
        """A view of a dequantized tensor (``w.t()``) is still dequantized data."""
        mark = getattr(source, _QUANTIZED_MARK, None) if isinstance(source, tensor_type) else None
        if mark is not None and isinstance(out, tensor_type):
            setattr(out, _QUANTIZED_MARK, mark)

    quick_exit = _quick_mode_exit(TorchDispatchMode)
    if quick_exit is not None:
        CountingMode.__exit__ = quick_exit
    return CountingMode


_TORCH_SET_STANCE_NAMES = frozenset(
    {"RuntimeError", "_stance", "get_eval_frame_callback", "torch._C._dynamo.eval_frame"}
)
"""The names ``torch._dynamo.eval_frame._set_stance`` uses in the torch versions whose stance
change ``_force_eager_compile`` reproduces."""


def _force_eager_compile() -> Callable[[], None] | None:
    """Set torch.compile's ``force_eager`` stance now; returns what restores the one before.

    In a window, compiled functions run their eager code, which the dispatch mode sees: a
    compiled kernel bypasses it, and under the mode dynamo would skip every frame, which
    ``fullgraph=True`` (and eager ``flex_attention``, which compiles itself) turns into an
    error. None where torch.compile is not loaded (nothing to run eagerly, nothing spent) or
    inside a compiled region (the stance cannot change there).
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is None:
        return None
    quick = _quick_force_eager(eval_frame)
    if quick is not None:
        return quick()
    import torch

    try:
        stance = torch.compiler.set_stance("force_eager")
    except RuntimeError:
        return None
    return functools.partial(stance.__exit__, None, None, None)


@functools.cache
def _quick_force_eager(eval_frame: Any) -> Callable[[], Callable[[], None] | None] | None:
    """``torch.compiler.set_stance("force_eager")`` for one window without its 5 µs, or None.

    The public call builds a stance object and, twice, runs an import statement that costs
    2 µs here, at every window of every process that imported torchvision (which loads
    dynamo). The quick one swaps the stance as ``_set_stance`` does, refusing inside a
    compiled region as it does, and only where ``_set_stance`` is the one it reproduces.
    """
    if not _uses_exactly(getattr(eval_frame, "_set_stance", None), _TORCH_SET_STANCE_NAMES):
        return None
    from torch._C._dynamo.eval_frame import get_eval_frame_callback

    force_eager = eval_frame.DynamoStance("force_eager")

    def set_force_eager() -> Callable[[], None] | None:
        callback = get_eval_frame_callback()
        if callback is not False and callback is not None:
            return None
        restore = functools.partial(setattr, eval_frame, "_stance", eval_frame._stance)
        eval_frame._stance = force_eager
        return restore

    return set_force_eager


def _unpacked_sizes(packed: Any, fp16_weights: bool) -> tuple[Any, tuple[int, ...], list[Any]]:
    """The packed params (kept alive so its id is not reused during the window), the weight's
    shape and the (dtype, bytes) of its weight and bias as stored (fp16 weights unpack as
    fp32)."""
    import torch

    weight, bias = packed.unpack()[:2]
    if fp16_weights:
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
            ``int32_add_pj``, ``sram_pj_per_64_bits``, ``dram_pj_per_32_bits``, and
            ``sram_capacity_bytes``; ``calibration`` names the hardware a fitted table came
            from). Unknown keys raise ``ConfigError``.
        breakdown: also break the reading down by operator and by module
            (``details["by_operator"]``, ``details["by_module"]``); the module breakdown tracks
            the module stack, which costs a little per module call, so it is off by default.

    The reading's domains are ``compute`` (MACs) and ``memory`` (bytes moved); ``details`` holds
    MACs per precision, FLOPs per operator, bytes per dtype and per memory level, the operators
    without a formula (``uncounted_operators``) and the table and memory model used.
    """

    name = "counted"
    kind = "counted"
    deterministic = True
    min_window_seconds = 0.0

    def __init__(
        self, energy_table: Mapping[str, Any] | None = None, breakdown: bool = False
    ) -> None:
        self.energy_table: dict[str, float] = validate_energy_table(energy_table)
        calibration = (energy_table or {}).get(CALIBRATION_KEY)
        self.calibration: dict[str, Any] | None = dict(calibration) if calibration else None
        self.breakdown = breakdown
        self._overridden = sorted(
            key
            for key, value in self.energy_table.items()
            if value != DEFAULT_ENERGY_TABLE_PICOJOULES[key]
        )
        self._mac_picojoules = {
            precision: mac_picojoules(self.energy_table, precision) for precision in PRECISIONS
        }
        self._dram_picojoules_per_byte = memory_picojoules_per_byte(self.energy_table)
        self._sram_picojoules_per_byte = sram_picojoules_per_byte(self.energy_table)
        self._capacity_bytes = self.energy_table["sram_capacity_bytes"]
        static: dict[str, Any] = {
            "mac_picojoules": dict(self._mac_picojoules),
            "energy_table_picojoules": dict(self.energy_table),
            "energy_table_source": self.energy_table_source,
            "memory_model": MEMORY_MODEL,
            "label": self.label,
        }
        if self.calibration is not None:
            static["calibration"] = dict(self.calibration)
        self._static_details = static
        """Details every reading shares (one set of dicts, not copied per window: readings are
        picklable for distributed runs; treat them as read-only)."""
        self._mode: Any = None
        self._tracker: Any = None
        self._restore_compile_stance: Callable[[], None] | None = None
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
    def label(self) -> str:
        """``counted`` or ``counted (calibrated to <hardware>, <date>)``."""
        if self.calibration is None:
            return "counted"
        return f"counted ({calibration_label(self.calibration)})"

    @property
    def energy_table_source(self) -> str:
        """Where the table's figures come from, naming the keys the user overrode."""
        if self.calibration is not None:
            return f"{calibration_label(self.calibration)} (fitted by pytest-energy calibrate)"
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
        mode = self._mode
        mode.tally = _Tally()
        mode.quantized_seen = False
        if self.breakdown:
            self._tracker = _ModuleStack()
            self._tracker.__enter__()
            mode.module_path = self._tracker.innermost
        self._restore_compile_stance = _force_eager_compile()
        mode.__enter__()
        self._window_thread = threading.get_ident()
        self._started_seconds = time.perf_counter()

    def stop(self) -> Reading:
        """Close the window and price what it counted."""
        return self.stop_pending()()

    def stop_pending(self) -> PendingReading:
        """Close the window now; what it counted is priced when the reading is asked for."""
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
        self._end_window()
        self._window_thread = None
        tally = self._mode.tally
        self._mode.packed_weights.clear()
        return functools.partial(self._reading, tally, stopped_seconds - self._started_seconds)

    def _end_window(self) -> None:
        """Leave what ``start`` entered besides the dispatch mode: module tracking, the stance."""
        if self._tracker is not None:
            self._tracker.__exit__(None, None, None)
            self._tracker = None
            self._mode.module_path = None
        if self._restore_compile_stance is not None:
            self._restore_compile_stance()
            self._restore_compile_stance = None

    def _entry_joules(self, entry: _Entry) -> tuple[float, int, int]:
        """(joules, SRAM bytes, DRAM bytes) of one call of ``entry``."""
        sram_bytes, dram_bytes = split_by_level(entry.operand_bytes, self._capacity_bytes)
        picojoules = (
            (entry.flops // 2) * self._mac_picojoules[entry.precision]
            + sram_bytes * self._sram_picojoules_per_byte
            + dram_bytes * self._dram_picojoules_per_byte
        )
        return picojoules / _PICOJOULES_PER_JOULE, sram_bytes, dram_bytes

    def _reading(self, tally: _Tally, seconds: float) -> Reading:
        macs: dict[str, int] = {}
        flops_by_operator: dict[str, int] = {}
        bytes_by_dtype: dict[Any, int] = {}
        uncounted: dict[str, int] = {}
        by_operator: dict[str, dict[str, Any]] = {}
        by_module: dict[str, dict[str, Any]] = {}
        sram_total = dram_total = 0
        calls_total = tally.passthrough_calls
        for slot, calls in tally.calls.items():
            entry, module = slot if isinstance(slot, tuple) else (slot, None)
            calls_total += calls
            if entry.flops:
                macs[entry.precision] = macs.get(entry.precision, 0) + calls * (entry.flops // 2)
                flops_by_operator[entry.name] = (
                    flops_by_operator.get(entry.name, 0) + calls * entry.flops
                )
            for dtype, size in entry.bytes_by_dtype:
                bytes_by_dtype[dtype] = bytes_by_dtype.get(dtype, 0) + calls * size
            if entry.uncounted:
                uncounted[entry.name] = uncounted.get(entry.name, 0) + calls
            joules, sram_bytes, dram_bytes = self._entry_joules(entry)
            sram_total += calls * sram_bytes
            dram_total += calls * dram_bytes
            if self.breakdown:
                moved = calls * (sram_bytes + dram_bytes)
                row = by_operator.setdefault(
                    entry.name, {"calls": 0, "flops": 0, "bytes": 0, "joules": 0.0}
                )
                row["calls"] += calls
                row["flops"] += calls * entry.flops
                row["bytes"] += moved
                row["joules"] += calls * joules
                place = by_module.setdefault(
                    module or "(outside any module)", {"flops": 0, "bytes": 0, "joules": 0.0}
                )
                place["flops"] += calls * entry.flops
                place["bytes"] += moved
                place["joules"] += calls * joules
        macs_by_precision = {
            precision: macs[precision] for precision in PRECISIONS if precision in macs
        }
        compute_picojoules = sum(
            count * self._mac_picojoules[precision]
            for precision, count in macs_by_precision.items()
        )
        memory_picojoules = (
            sram_total * self._sram_picojoules_per_byte
            + dram_total * self._dram_picojoules_per_byte
        )
        details: dict[str, Any] = {
            "macs_by_precision": macs_by_precision,
            "flops_by_operator": dict(sorted(flops_by_operator.items())),
            "bytes_moved_by_dtype": {
                str(dtype).removeprefix("torch."): size for dtype, size in bytes_by_dtype.items()
            },
            "bytes_moved_by_level": {"sram": sram_total, "dram": dram_total},
            "operator_calls": calls_total,
            "uncounted_operators": dict(sorted(uncounted.items())),
            **self._static_details,
        }
        if self.breakdown:
            details["by_operator"] = dict(
                sorted(by_operator.items(), key=lambda item: -item[1]["joules"])
            )
            details["by_module"] = dict(
                sorted(by_module.items(), key=lambda item: -item[1]["joules"])
            )
        joules_by_domain = {
            "compute": compute_picojoules / _PICOJOULES_PER_JOULE,
            "memory": memory_picojoules / _PICOJOULES_PER_JOULE,
        }
        if self.energy_table["operator_call_pj"]:
            joules_by_domain["operator_calls"] = (
                calls_total * self.energy_table["operator_call_pj"] / _PICOJOULES_PER_JOULE
            )
        return Reading(
            meter=self.name,
            kind=self.kind,
            seconds=seconds,
            joules_by_domain=joules_by_domain,
            flops=sum(flops_by_operator.values()),
            bytes_moved=sram_total + dram_total,
            details=details,
        )

    def bookkeeping(self, reading: Reading) -> Bookkeeping | None:
        """Counting's own CPU time in the window: its operator calls × the cost of one.

        The cost of one call is measured once per process (``bookkeeping_seconds_per_call``),
        so a timed meter sharing a training window takes counting out of its TEC.
        """
        calls = int(reading.details.get("operator_calls", 0)) if reading.details else 0
        if not calls:
            return None
        per_call = bookkeeping_seconds_per_call()
        if not per_call:
            return Bookkeeping(
                meter=self.name,
                cpu_seconds=0.0,
                how=f"{calls} operator calls; counting's cost per call could not be measured "
                f"in this process, so none was taken out",
            )
        return Bookkeeping(
            meter=self.name,
            cpu_seconds=calls * per_call,
            how=f"{calls} operator calls × {per_call * 1e6:.2f} µs of counting per call "
            f"(measured once in this process on a small training step, with and without "
            f"counting)",
        )

    def describe(self) -> dict[str, Any]:
        """Name, kind, label, the energy table and its source, and what is counted."""
        description = {
            "name": self.name,
            "kind": self.kind,
            "label": self.label,
            "energy_table_picojoules": dict(self.energy_table),
            "energy_table_source": self.energy_table_source,
            "source": self.energy_table_source,
            "compute": "MACs (FLOPs / 2) from torch.utils.flop_counter's formulas and this "
            "meter's (attention, multi-head attention, fused encoder layer, recurrent layers, "
            "int8 eager and oneDNN kernels, q/dq GEMMs at int8) × (mult + add) pJ at the "
            "operands' precision; int8 accumulates in int32; operators with tensor inputs and "
            "no formula are listed in uncounted_operators",
            "memory": MEMORY_MODEL,
        }
        if self.calibration is not None:
            description["calibration"] = dict(self.calibration)
        return description

    def close(self) -> None:
        """Close a window left open, so the dispatch mode does not outlive the meter."""
        if self._window_thread == threading.get_ident():
            self._mode.__exit__(None, None, None)
            self._end_window()
            self._window_thread = None


_CALIBRATION_STEPS = 8
_CALIBRATION_BATCHES = 5


@functools.cache
def bookkeeping_seconds_per_call() -> float:
    """CPU seconds one operator call costs more inside a counting window than outside it.

    Measured once per process, on this thread's CPU clock, on a tiny training step (conv,
    linear, loss, backward, SGD: the operator mix of training, on tensors so small that the
    dispatch mode's cost dominates): batches of steps alternate with and without counting,
    and the fastest of each is compared, since interference only ever adds time. A lower
    bound: in a real step the kernels evict the interpreter's caches between operators. Takes
    about 50 ms; the global random state is left as it was. 0 when it cannot be measured.
    """
    import torch

    def thread_seconds(run: Callable[[], None]) -> float:
        started = time.thread_time()
        run()
        return time.thread_time() - started

    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(4 * 6 * 6, 10),
        )
        optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
        images, labels = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
        mode = _counting_mode_class()()

        def steps() -> None:
            for _ in range(_CALIBRATION_STEPS):
                optimiser.zero_grad()
                torch.nn.functional.cross_entropy(model(images), labels).backward()
                optimiser.step()

        def counted_steps() -> None:
            with mode:
                steps()

        try:
            counted_steps()  # fills the formula cache, as a training loop's first step does
            mode.tally = _Tally()
            counted_steps()
            calls = sum(mode.tally.calls.values()) + mode.tally.passthrough_calls
            bare, counting = [], []
            for _ in range(_CALIBRATION_BATCHES):
                bare.append(thread_seconds(steps))
                counting.append(thread_seconds(counted_steps))
        except Exception:  # never break a window over its correction: charge nothing
            return 0.0
    return max(0.0, min(counting) - min(bare)) / max(calls, 1)


class _ModuleStack:
    """The module running now (its dotted path), from global forward hooks.

    Backward operators run outside any forward: they are charged to ``(backward)``.
    """

    def __init__(self) -> None:
        self._stack: list[str] = []
        self._names: dict[int, str] = {}
        self._handles: list[Any] = []

    def innermost(self) -> str:
        return self._stack[-1] if self._stack else "(outside any module)"

    def _enter(self, module: Any, inputs: Any) -> None:
        path = self._names.get(id(module))
        if path is None:
            parent = self._stack[-1] if self._stack else None
            path = type(module).__name__ if parent is None else f"{parent}.?"
            self._names[id(module)] = path
        for child_name, child in module.named_children():
            self._names.setdefault(id(child), f"{path}.{child_name}")
        self._stack.append(path)

    def _leave(self, module: Any, inputs: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop()

    def __enter__(self) -> _ModuleStack:
        from torch.nn.modules import module as module_hooks

        self._handles = [
            module_hooks.register_module_forward_pre_hook(self._enter),
            module_hooks.register_module_forward_hook(self._leave, always_call=True),
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def count(
    fn: Callable[[], object],
    energy_table: Mapping[str, Any] | None = None,
    breakdown: bool = False,
) -> Reading:
    """Run ``fn()`` once inside a ``counted`` window and return the reading."""
    meter = CountedMeter(energy_table, breakdown=breakdown)
    meter.start()
    try:
        fn()
    finally:
        reading = meter.stop()
    return reading
