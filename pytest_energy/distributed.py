"""Energy of training spread over processes with torch.distributed (spawned here, or torchrun).

Every rank measures its own work. At the end of each training window the ranks exchange their
readings (one all-gather) and every rank gets the same combined reading: joules summed over the
ranks, each rank's own figure kept in ``CombinedReading.ranks`` (``"ranks"`` in the results). What
is summed follows the meter's ``scope``, so nothing is counted twice:

- ``process`` (cputime, counted): each rank counts its own process; all ranks add up.
- ``host`` (rapl): the meter sees the whole machine, so one rank per host reads it (the lowest
  rank on each hostname); the other ranks on that host leave it closed.
- ``device`` (nvml): each GPU (known by its UUID) is counted once: for the rank whose current
  CUDA device it is, else for the lowest rank that sees it.

Windows open and close together on every rank (a barrier at both edges), so the rank that reads a
host-wide meter has it open while the other ranks of its host work. Inference rounds are not
combined: IEC is the energy of one inference on one rank's device.

Only rank 0 writes results, baselines and reports (``reports_here()``); other ranks stay quiet.

Two ways in::

    # 1. A lifecycle test starts its ranks itself (new processes on this machine):
    def test_ddp(energy):
        run = energy.train_distributed("train", DataParallelTraining(...), world_size=2)
        model.load_state_dict(run.results[0])       # what rank 0's fn returned

    # 2. The whole pytest runs on every rank (any number of machines), each test trains with
    #    DDP inside `with energy.train(...)`, and a session fixture in conftest.py calls
    #    torch.distributed.init_process_group():
    #    torchrun --standalone --nproc-per-node 2 -m pytest benchmarks --energy
    #    (add --local-ranks-filter 0 to see rank 0's terminal only)

This module imports torch only when a run is launched, so the plugin stays light without it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_energy.errors import MeasurementError
from pytest_energy.meters.base import Meter, MeterScope, Reading
from pytest_energy.results import reading_dict

RANK_DOMAIN_SEPARATOR = "/"
"""Combined readings name each domain ``rank<R>/<domain>``, e.g. ``rank1/gpu:0``."""

DEFAULT_TIMEOUT_SECONDS = 1800.0
FORKSERVER_PRELOAD = (
    "torch",
    "torch.distributed",
    "torch._dynamo",  # DistributedDataParallel imports it on construction: about a second
    "pytest_energy.distributed",
)
"""Modules the forkserver imports once, so each rank it forks starts in milliseconds."""


class DistributedRunError(MeasurementError):
    """A rank of ``run_distributed`` failed, or the run could not start; the message says which."""


# --- which process is which ------------------------------------------------------------------


def _initialised_distributed() -> Any | None:
    """``torch.distributed`` when this process has a process group, else None (never imports)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def launcher_world_size() -> int:
    """World size a launcher (torchrun, or ``run_distributed``) gave this process; 1 when none."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 1
    try:
        return max(1, int(os.environ["WORLD_SIZE"]))
    except ValueError:
        return 1


def process_rank() -> int:
    """This process's global rank: torch.distributed's, else the launcher's ``RANK``, else 0."""
    dist = _initialised_distributed()
    if dist is not None:
        return int(dist.get_rank())
    if launcher_world_size() > 1:
        try:
            return int(os.environ["RANK"])
        except ValueError:
            return 0
    return 0


def reports_here() -> bool:
    """True on the one process that writes results, baselines and reports: rank 0."""
    return process_rank() == 0


def meter_scope(meter: Meter | type[Meter]) -> MeterScope:
    """What one reading of ``meter`` covers; ``process`` for meters that do not say."""
    return getattr(meter, "scope", "process")


def host_reader_ranks(hostnames: Sequence[str]) -> frozenset[int]:
    """Ranks that read host-wide meters: the lowest rank on each host (``hostnames[rank]``)."""
    first_rank_by_host: dict[str, int] = {}
    for rank, host in enumerate(hostnames):
        first_rank_by_host.setdefault(host, rank)
    return frozenset(first_rank_by_host.values())


# --- adding readings up ----------------------------------------------------------------------


@dataclass(frozen=True)
class CombinedReading(Reading):
    """A reading summed over ranks; ``ranks`` holds each counted rank's own JSON-ready figure.

    ``joules_by_domain`` names each domain after the rank that counted it (``rank1/gpu:0``);
    ``seconds`` is the longest rank's window; ``flops`` and ``bytes_moved`` are summed.
    """

    ranks: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class RankReport:
    """What one rank saw in one window, as sent to the others.

    Attributes:
        rank: global rank.
        host: hostname; ranks on one host share its host-wide meters.
        readings: meter name → this rank's reading.
        scopes: meter name → the meter's scope.
        gpu_domain: this rank's current CUDA device as an nvml domain (``gpu:1``), if any.
    """

    rank: int
    host: str
    readings: Mapping[str, Reading]
    scopes: Mapping[str, MeterScope] = field(default_factory=dict)
    gpu_domain: str | None = None


def _device_identity(report: RankReport, reading: Reading, domain: str) -> str:
    """A GPU's identity across ranks: its UUID when the reading names it, else host and domain."""
    gpus = reading.details.get("gpus") if isinstance(reading.details, Mapping) else None
    if isinstance(gpus, Mapping):
        described = gpus.get(domain)
        if isinstance(described, Mapping) and described.get("uuid"):
            return str(described["uuid"])
    return f"{report.host}{RANK_DOMAIN_SEPARATOR}{domain}"


def _counted_domains(
    scope: MeterScope, present: Sequence[tuple[RankReport, Reading]]
) -> list[tuple[RankReport, Reading, list[str]]]:
    """For each rank that read the meter, the domains it is credited with (no double counting)."""
    if scope == "host":
        hosts_done: set[str] = set()
        credited = []
        for report, reading in present:
            domains = [] if report.host in hosts_done else list(reading.joules_by_domain)
            hosts_done.add(report.host)
            credited.append((report, reading, domains))
        return credited
    if scope == "device":
        owner: dict[str, int] = {}
        for report, reading in present:
            if report.gpu_domain in reading.joules_by_domain:
                identity = _device_identity(report, reading, report.gpu_domain)
                owner.setdefault(identity, report.rank)
        for report, reading in present:
            for domain in reading.joules_by_domain:
                owner.setdefault(_device_identity(report, reading, domain), report.rank)
        return [
            (
                report,
                reading,
                [
                    domain
                    for domain in reading.joules_by_domain
                    if owner[_device_identity(report, reading, domain)] == report.rank
                ],
            )
            for report, reading in present
        ]
    return [(report, reading, list(reading.joules_by_domain)) for report, reading in present]


def _rank_entry(report: RankReport, reading: Reading, domains: Sequence[str]) -> dict[str, Any]:
    """One rank's own figure for the results: what it is credited with (details left out)."""
    own = Reading(
        meter=reading.meter,
        kind=reading.kind,
        seconds=reading.seconds,
        joules_by_domain={domain: reading.joules_by_domain[domain] for domain in domains},
        flops=reading.flops,
        bytes_moved=reading.bytes_moved,
    )
    return {"rank": report.rank, "host": report.host, **reading_dict(own)}


def _sum_optional(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return float(sum(known)) if known else None


def combine_rank_reports(reports: Sequence[RankReport]) -> dict[str, CombinedReading]:
    """Each meter's readings over all ranks as one reading: the sum, by the meter's scope.

    A pure function of the reports: every rank computes the same result from the all-gather.
    """
    ordered = sorted(reports, key=lambda report: report.rank)
    names = list(dict.fromkeys(name for report in ordered for name in report.readings))
    combined: dict[str, CombinedReading] = {}
    for name in names:
        present = [(report, report.readings[name]) for report in ordered if name in report.readings]
        scope = next(
            (report.scopes[name] for report, _ in present if name in report.scopes), "process"
        )
        credited = [
            (report, reading, domains)
            for report, reading, domains in _counted_domains(scope, present)
            if domains or scope == "process"
        ]
        joules_by_domain = {
            f"rank{report.rank}{RANK_DOMAIN_SEPARATOR}{domain}": reading.joules_by_domain[domain]
            for report, reading, domains in credited
            for domain in domains
        }
        first = present[0][1]
        combined[name] = CombinedReading(
            meter=name,
            kind=first.kind,
            seconds=max(reading.seconds for _, reading in present),
            joules_by_domain=joules_by_domain,
            flops=_sum_optional(reading.flops for _, reading, _ in credited),
            bytes_moved=_sum_optional(reading.bytes_moved for _, reading, _ in credited),
            details={
                "combined": f"sum over ranks ({scope} scope)",
                "world_size": len(ordered),
                "ranks_read": [report.rank for report, _ in present],
            },
            ranks=tuple(
                _rank_entry(report, reading, domains) for report, reading, domains in credited
            ),
        )
    return combined


def own_device_view(
    readings: Mapping[str, Reading], scopes: Mapping[str, MeterScope], gpu_domain: str | None
) -> dict[str, Reading]:
    """A rank's own figure in a window that is not combined: its own GPU only, when it has one."""
    if gpu_domain is None:
        return dict(readings)
    own: dict[str, Reading] = {}
    for name, reading in readings.items():
        if scopes.get(name) == "device" and gpu_domain in reading.joules_by_domain:
            reading = Reading(
                meter=reading.meter,
                kind=reading.kind,
                seconds=reading.seconds,
                joules_by_domain={gpu_domain: reading.joules_by_domain[gpu_domain]},
                flops=reading.flops,
                bytes_moved=reading.bytes_moved,
                details=reading.details,
            )
        own[name] = reading
    return own


# --- the ranks of this process group ---------------------------------------------------------


def _current_gpu_domain() -> str | None:
    """``gpu:<index>`` of this process's current CUDA device, when CUDA is in use here."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return f"gpu:{torch.cuda.current_device()}"


class RankGroup:
    """This process's place among the ranks of the default process group, and the exchange."""

    def __init__(self, dist: Any) -> None:
        self._dist = dist
        self.world = dist.group.WORLD
        self.rank = int(dist.get_rank())
        self.world_size = int(dist.get_world_size())
        self.host = socket.gethostname()
        hosts: list[Any] = [None] * self.world_size
        dist.all_gather_object(hosts, self.host)
        self.hosts: tuple[str, ...] = tuple(hosts)
        self.reads_host_meters = self.rank in host_reader_ranks(self.hosts)

    def meters_to_read(self, meters: Iterable[Meter]) -> list[Meter]:
        """The meters this rank opens: host-wide ones only on its host's reading rank."""
        return [meter for meter in meters if meter_scope(meter) != "host" or self.reads_host_meters]

    def barrier(self) -> None:
        self._dist.barrier()

    @contextlib.contextmanager
    def window(self, meters: Sequence[Meter], across_ranks: bool) -> Iterator[dict[str, Reading]]:
        """Measure the body on this rank; on exit the dict holds the combined readings.

        ``across_ranks``: barrier at both edges and sum over ranks (training); otherwise this
        rank's own figure (inference). Counting meters stop before the closing barrier, so the
        exchange is not counted as work.
        """
        chosen = self.meters_to_read(meters)
        scopes = {meter.name: meter_scope(meter) for meter in chosen}
        readings: dict[str, Reading] = {}
        if across_ranks:
            self.barrier()
        started: list[Meter] = []
        try:
            for meter in chosen:
                meter.start()
                started.append(meter)
            yield readings
        finally:
            own: dict[str, Reading] = {}
            for meter in reversed(started):
                if meter.capabilities.counts_operations:
                    own[meter.name] = meter.stop()
            if across_ranks:
                self.barrier()
            for meter in reversed(started):
                if not meter.capabilities.counts_operations:
                    own[meter.name] = meter.stop()
            gpu_domain = _current_gpu_domain()
            if across_ranks:
                report = RankReport(self.rank, self.host, own, scopes, gpu_domain)
                reports: list[Any] = [None] * self.world_size
                self._dist.all_gather_object(reports, report)
                readings.update(combine_rank_reports(reports))
            else:
                readings.update(own_device_view(own, scopes, gpu_domain))


_group_cache: list[RankGroup] = []


def current_rank_group() -> RankGroup | None:
    """The ranks this process measures with, or None outside a multi-rank process group.

    Raises MeasurementError under a launcher (torchrun) whose process group is not initialised:
    rank 0 would report only its own share.
    """
    dist = _initialised_distributed()
    if dist is None:
        world_size = launcher_world_size()
        if world_size > 1:
            raise MeasurementError(
                f"this pytest is rank {process_rank()} of {world_size} (RANK and WORLD_SIZE are "
                f"set, e.g. by torchrun) but torch.distributed is not initialised, so the ranks "
                f"cannot add up their energy. Call torch.distributed.init_process_group() before "
                f"the first measured window, e.g. in a session-scoped fixture in conftest.py."
            )
        return None
    if dist.get_world_size() < 2:
        return None
    if _group_cache and _group_cache[0].world is dist.group.WORLD:
        return _group_cache[0]
    group = RankGroup(dist)
    _group_cache[:] = [group]
    return group


# --- launching ranks from a test -------------------------------------------------------------


@dataclass(frozen=True)
class MeterRecipe:
    """How a rank process builds its own copy of a meter: the class and its keyword arguments."""

    meter_class: type[Meter]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Meter:
        return self.meter_class(**self.kwargs)


@dataclass(frozen=True)
class DistributedRun:
    """What ``run_distributed`` brings back.

    Attributes:
        world_size: number of ranks.
        backend: torch.distributed backend (``gloo``, ``nccl``).
        results: ``fn``'s return value on each rank, by rank.
        readings: meter name → reading summed over ranks (a ``CombinedReading``, one rank
            included); empty when nothing was measured.
        seconds: wall-clock seconds from launch to the last rank's exit, start-up included.
    """

    world_size: int
    backend: str
    results: tuple[Any, ...]
    readings: Mapping[str, Reading]
    seconds: float

    def joules(self, meter: str) -> float:
        """Energy of the run in joules, summed over ranks, as ``meter`` saw it."""
        return self.readings[meter].joules


def meter_recipes(meters: Sequence[Meter], options: Any = None) -> list[MeterRecipe]:
    """Recipes to rebuild ``meters`` in rank processes, with their command-line options."""
    from pytest_energy.meters import METER_NAMES, MeterOptions

    options = options if options is not None else MeterOptions()
    return [
        MeterRecipe(
            type(meter),
            options.constructor_kwargs(meter.name) if meter.name in METER_NAMES else {},
        )
        for meter in meters
    ]


def _default_start_method() -> str:
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _check_picklable(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        pickle.dumps((fn, args))
    except Exception as error:
        raise DistributedRunError(
            f"run_distributed: {fn!r} cannot be sent to the rank processes ({error}). Each rank "
            f"is a new process: pass a module-level function, a functools.partial of "
            f"one, or an instance of a module-level class (e.g. DataParallelTraining)."
        ) from None


def run_distributed(
    fn: Callable[..., Any],
    world_size: int = 2,
    *,
    backend: str = "gloo",
    args: tuple[Any, ...] = (),
    meters: Sequence[Meter] = (),
    meter_options: Any = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    start_method: str | None = None,
) -> DistributedRun:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` new processes of one process group.

    Each rank initialises torch.distributed (``backend``; a file store, so no port is taken),
    sees torchrun's variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``),
    builds its own copy of ``meters``, and measures ``fn`` in one window combined over the ranks
    (see the module docstring). With ``backend="nccl"`` rank R uses GPU R.

    ``start_method``: ``forkserver`` by default where there is one: a server process imports
    torch once and later ranks fork from it (CUDA-safe, and seconds faster per run); else
    ``spawn``. Either way ``fn`` and ``args`` are pickled, so they must be importable.

    Raises DistributedRunError naming the rank and its traceback when a rank fails.
    """
    __tracebackhide__ = True
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise DistributedRunError(
            f"run_distributed: world_size must be an int ≥ 1, got {world_size!r}"
        )
    if not callable(fn):
        raise DistributedRunError(f"run_distributed: fn must be callable, got {type(fn).__name__}")
    if _initialised_distributed() is not None or launcher_world_size() > 1:
        raise DistributedRunError(
            "run_distributed: this process is already a rank of a distributed run (torchrun); "
            "measure the training with `energy.train(phase)` on every rank instead"
        )
    _check_picklable(fn, args)
    recipes = meter_recipes(meters, meter_options)

    import torch
    import torch.multiprocessing as torch_mp

    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise DistributedRunError(
            f"run_distributed: nccl needs a GPU per rank; {world_size} ranks but "
            f"{torch.cuda.device_count()} GPU(s) visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use fewer ranks or backend='gloo'"
        )

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pytest-energy-ranks-") as folder:
        init_method = (Path(folder) / "store").as_uri()
        method = start_method or _default_start_method()
        context = torch_mp.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(list(FORKSERVER_PRELOAD))
        messages = context.SimpleQueue()
        processes = torch_mp.start_processes(
            _rank_main,
            args=(world_size, backend, init_method, fn, args, recipes, messages),
            nprocs=world_size,
            join=False,
            start_method=method,
        )
        received: dict[int, tuple[Any, dict[str, Reading] | None]] = {}
        deadline = started + timeout_seconds
        try:
            while True:
                while not messages.empty():
                    rank, payload = messages.get()
                    received[rank] = pickle.loads(payload)
                if processes.join(timeout=0.05):
                    break
                if time.perf_counter() > deadline:
                    raise DistributedRunError(
                        f"run_distributed: ranks still running after {timeout_seconds:g} s; "
                        f"stopped them"
                    )
        except torch_mp.ProcessRaisedException as error:
            raise DistributedRunError(
                f"run_distributed: rank {error.error_index} of {world_size} failed:\n{error}"
            ) from None
        except torch_mp.ProcessExitedException as error:
            raise DistributedRunError(
                f"run_distributed: rank {error.error_index} of {world_size} died "
                f"(exit code {error.exit_code})"
            ) from None
        finally:
            for process in processes.processes:
                if process.is_alive():
                    process.terminate()
                    process.join()
        while not messages.empty():
            rank, payload = messages.get()
            received[rank] = pickle.loads(payload)
    missing = sorted(set(range(world_size)) - set(received))
    if missing:
        raise DistributedRunError(f"run_distributed: ranks {missing} exited without a result")
    return DistributedRun(
        world_size=world_size,
        backend=backend,
        results=tuple(received[rank][0] for rank in range(world_size)),
        readings=received[0][1] or {},
        seconds=time.perf_counter() - started,
    )


def _rank_main(
    rank: int,
    world_size: int,
    backend: str,
    init_method: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    recipes: Sequence[MeterRecipe],
    messages: Any,
) -> None:
    """One rank: join the group, measure ``fn`` with this rank's meters, send back the result."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    import torch
    import torch.distributed as dist

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if backend == "nccl":
        torch.cuda.set_device(rank % max(1, torch.cuda.device_count()))
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    meters = [recipe.build() for recipe in recipes]
    try:
        readings: dict[str, Reading] = {}
        group = current_rank_group()
        if not meters:
            value = fn(rank, world_size, *args)
        elif group is not None:
            with group.window(meters, across_ranks=True) as readings:
                value = fn(rank, world_size, *args)
        else:
            with _single_rank_window(meters) as readings:
                value = fn(rank, world_size, *args)
        messages.put((rank, pickle.dumps((value, readings if rank == 0 else None))))
    finally:
        for meter in meters:
            meter.close()
        dist.destroy_process_group()


@contextlib.contextmanager
def _single_rank_window(meters: Sequence[Meter]) -> Iterator[dict[str, Reading]]:
    """The window of a one-rank run, its readings in the same combined form as N ranks'."""
    readings: dict[str, Reading] = {}
    own: dict[str, Reading] = {}
    started: list[Meter] = []
    try:
        for meter in meters:
            meter.start()
            started.append(meter)
        yield readings
    finally:
        for meter in reversed(started):
            own[meter.name] = meter.stop()
        scopes = {meter.name: meter_scope(meter) for meter in started}
        report = RankReport(0, socket.gethostname(), own, scopes, _current_gpu_domain())
        readings.update(combine_rank_reports([report]))


__all__ = [
    "CombinedReading",
    "DistributedRun",
    "DistributedRunError",
    "MeterRecipe",
    "RankGroup",
    "RankReport",
    "combine_rank_reports",
    "current_rank_group",
    "host_reader_ranks",
    "launcher_world_size",
    "meter_recipes",
    "meter_scope",
    "own_device_view",
    "process_rank",
    "reports_here",
    "run_distributed",
]
