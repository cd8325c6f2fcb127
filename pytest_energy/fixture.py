"""The ``energy`` fixture: train windows, charges, inference rounds and accuracy of one test."""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pytest_energy.breakdown import inference_breakdown
from pytest_energy.config import LifecycleSettings, parse_positive_int
from pytest_energy.distributed import DistributedRun, run_distributed
from pytest_energy.errors import ConfigError, MeasurementError
from pytest_energy.latency import latency_summary
from pytest_energy.meters.base import capabilities
from pytest_energy.progress import PhaseProgress
from pytest_energy.results import InferenceRecord, PhaseRecord, Settling, lifecycle_result
from pytest_energy.session import Charge, EnergySession, refuse_nesting
from pytest_energy.steps import StepRecorder

GPU_METERS = frozenset({"nvml"})
"""Meters that read GPUs only: work placed on the CPU (``energy.inference(runs_on="cpu")``) is
not theirs to measure, or they would charge the GPUs' idle power as its energy."""


class EnergyFixture:
    """Measures one method's life: its training phases (TEC) and its inference (IEC).

    Without ``--energy`` (``enabled`` is False) the code still runs, nothing is measured and
    ``inference`` calls its function once, so a benchmark doubles as a fast functional test.
    """

    def __init__(self, session: EnergySession, settings: LifecycleSettings, where: str) -> None:
        self._session = session
        self.settings = settings
        self.where = where
        self.phases: list[PhaseRecord] = []
        self.inference_record: InferenceRecord | None = None
        self._accuracy: float | None = None
        self._phase_names: set[str] = set()
        self._not_measured: dict[str, str] = {}
        self.accuracy_interval: dict[str, float] | None = None
        """Optional confidence interval of ``accuracy``, e.g. ``{"low": 0.88, "high": 0.91,
        "confidence": 0.95, "samples": 1024}``; written to the result as ``accuracy_interval``."""
        self._steps: StepRecorder | None = None
        self.live = PhaseProgress(where)
        """The progress line ``progress()`` draws on; the plugin attaches the terminal's."""
        self.train_repeats: list[list[PhaseRecord]] = []
        """Train phases of each repeated run of the test body (``--energy-train-rounds``)."""
        self._first_run: tuple[list[PhaseRecord], InferenceRecord | None, float | None] | None = (
            None
        )
        self._open_window: str | None = None
        self._inference_called = False

    @property
    def enabled(self) -> bool:
        """True when this run measures energy (``--energy``)."""
        return self._session.enabled

    @property
    def accuracy(self) -> float | None:
        """Top-1 accuracy of the final model on held-out data, a fraction in [0, 1]."""
        return self._accuracy

    @accuracy.setter
    def accuracy(self, value: float) -> None:
        __tracebackhide__ = True
        if isinstance(value, bool):
            raise MeasurementError(
                f"energy.accuracy must be a number in [0, 1], got {value!r} (a bool is not an "
                f"accuracy: give the fraction of correct predictions)"
            )
        try:
            accuracy = float(value)
        except (TypeError, ValueError):
            raise MeasurementError(
                f"energy.accuracy must be a number in [0, 1], got {value!r}"
            ) from None
        if not 0.0 <= accuracy <= 1.0 or math.isnan(accuracy):
            hint = " (a fraction: 0.83, not 83)" if 1.0 < accuracy <= 100.0 else ""
            raise MeasurementError(f"energy.accuracy must be in [0, 1]{hint}, got {value!r}")
        self._accuracy = accuracy

    def _claim_phase_name(self, name: str, what: str) -> None:
        __tracebackhide__ = True
        if not isinstance(name, str) or not name:
            raise MeasurementError(f"{what} needs a non-empty phase name, got {name!r}")
        if name in self._phase_names:
            raise MeasurementError(
                f"{what}: phase {name!r} was already recorded in this test; give each phase its "
                f"own name (e.g. 'finetune-1', 'finetune-2')"
            )
        self._phase_names.add(name)

    def _open(self, label: str) -> None:
        """Refuse nested windows with or without ``--energy``: misuse fails the same either way."""
        __tracebackhide__ = True
        refuse_nesting(label, self._open_window)
        self._open_window = label

    @contextlib.contextmanager
    def _window(self, label: str) -> Iterator[None]:
        __tracebackhide__ = True
        self._open(label)
        try:
            yield
        finally:
            self._open_window = None

    def train(self, phase: str) -> TrainWindow:
        """Measure one training phase (compression, fine-tuning, search...); it adds to TEC.

        ``with energy.train("finetune"):`` around the phase's loop; call ``energy.progress()``
        once per step inside it for energy per step and per epoch.
        """
        return TrainWindow(self, phase)

    def train_distributed(
        self,
        phase: str,
        fn: Callable[..., Any],
        world_size: int = 2,
        backend: str = "gloo",
        args: tuple[Any, ...] = (),
        timeout_seconds: float | None = None,
    ) -> DistributedRun:
        """Run ``fn(rank, world_size, *args)`` on ``world_size`` processes as one training phase.

        Each rank (a new process in one torch.distributed group) measures its own work; the
        phase's joules are the sum over ranks and each rank's figure stays in the results under
        ``ranks``. ``fn`` must be importable by the new processes: a module-level function, a
        ``functools.partial`` of one, or e.g. ``DataParallelTraining(...)``. Returns the run,
        with ``fn``'s return value on every rank in ``.results``. ``timeout_seconds`` (default
        ``run_distributed``'s) bounds the whole run: raise it for long trainings.
        """
        __tracebackhide__ = True
        self._claim_phase_name(phase, f"energy.train_distributed({phase!r})")
        label = f"energy.train_distributed({phase!r})"
        with (
            self._window(label),
            self.live.phase_window(phase),
            self._session.window(label, meters=[]),
        ):
            run = run_distributed(
                fn,
                world_size,
                backend=backend,
                args=args,
                meters=self._session.meters if self.enabled else (),
                meter_options=self._session.meter_options,
                **({} if timeout_seconds is None else {"timeout_seconds": timeout_seconds}),
            )
        if self.enabled:
            self.phases.append(PhaseRecord(name=phase, charged=False, readings=dict(run.readings)))
        return run

    def progress(
        self,
        *,
        epoch: int | None = None,
        epochs: int | None = None,
        batch: int | None = None,
        batches: int | None = None,
        **values: Any,
    ) -> None:
        """Mark a training step and show progress; call it from a loop in ``energy.train()``.

        Each call closes one step: the phase's results get energy per step and per epoch
        (``details["steps"]`` of each meter that can be read mid-window, see ``steps.py``).

        Shows ``epoch 2/10 · batch 37/391``, any other keyword as given (``loss=0.31``), the
        phase's elapsed time and, for meters that can be read mid-window, joules so far. Only
        on a terminal with ``--energy``, never under ``-q``; redrawn at most four times a
        second, so calling it every batch costs a clock read.
        """
        fields = {"epoch": epoch, "epochs": epochs, "batch": batch, "batches": batches}
        if self._steps is not None:
            self._steps.mark(epoch)
        self.live.update(self._session.meters if self.enabled else None, {**fields, **values})

    def charge(self, charge: Charge) -> None:
        """Add work measured once per run (``energy_session.measure``) to this test's TEC."""
        __tracebackhide__ = True
        if not isinstance(charge, Charge):
            raise MeasurementError(
                f"energy.charge() takes the Charge that `with energy_session.measure(name) as "
                f"charge:` yields, got {type(charge).__name__}"
            )
        if not charge.closed:
            raise MeasurementError(
                f"energy.charge({charge.name!r}): its measure() window is still open"
            )
        self._claim_phase_name(charge.name, f"energy.charge({charge.name!r})")
        if self.enabled:
            self.phases.append(
                PhaseRecord(name=charge.name, charged=True, readings=charge.readings)
            )

    def inference(
        self,
        fn: Callable[[], Any],
        samples: int = 1,
        rounds: int | None = None,
        warmup: int | None = None,
        runs_on: str | None = None,
    ) -> InferenceRecord | None:
        """Measure the energy of ``fn`` per sample (IEC); ``fn`` infers ``samples`` samples.

        After ``warmup`` unmeasured calls, batches of calls are timed until one spans the timing
        meters' shortest resolvable window and the seconds per call settle (``settle_rounds``);
        the timing meters then measure ``rounds`` rounds of that many calls. A counting meter
        counts one call in a window of its own, so its bookkeeping does not inflate the timed
        rounds.
        ``runs_on="cpu"`` says ``fn`` runs on the CPU only (an int8 CPU model on a GPU machine):
        GPU meters (``GPU_METERS``) then do not measure it, the result says so under the meter's
        ``inference_not_measured``, and that meter has no IEC for this test.
        """
        __tracebackhide__ = True
        if not callable(fn):
            raise MeasurementError(
                f"energy.inference(fn) needs a callable, got {type(fn).__name__}"
            )
        try:
            samples = parse_positive_int(samples, "energy.inference(samples=...)")
            rounds = parse_positive_int(
                self._session.rounds if rounds is None else rounds, "energy.inference(rounds=...)"
            )
            warmup = parse_positive_int(
                self._session.warmup_calls if warmup is None else warmup,
                "energy.inference(warmup=...)",
            )
        except ConfigError as error:
            raise MeasurementError(str(error)) from None
        if runs_on not in (None, "cpu", "cuda"):
            raise MeasurementError(
                f"energy.inference(runs_on=...) is 'cpu', 'cuda' or None, got {runs_on!r}"
            )
        if self.inference_record is not None or self._inference_called:
            raise MeasurementError(
                "energy.inference() was already called in this test: one inference "
                "measurement per lifecycle test"
            )
        if self._open_window is not None:
            raise MeasurementError(
                f"energy.inference() was called inside {self._open_window}: measured windows "
                f"cannot nest. Call it after the training window closes."
            )
        self._inference_called = True
        if not self.enabled or self._first_run is not None:
            _call(fn, "energy.inference(fn)")
            return None
        for _ in range(warmup):
            _call(fn, "energy.inference(fn) during warm-up")
        record = InferenceRecord(samples_per_call=samples, warmup_calls=warmup)
        meters = list(self._session.meters)
        if runs_on == "cpu":
            for meter in meters:
                if meter.name in GPU_METERS:
                    self._not_measured[meter.name] = (
                        "the model runs on the CPU only; a GPU meter would read GPU idle power"
                    )
            meters = [meter for meter in meters if meter.name not in GPU_METERS]
        timing = [meter for meter in meters if not meter.capabilities.deterministic]
        counting = [meter for meter in meters if meter.capabilities.deterministic]
        if timing:
            window_seconds = round_window_seconds(timing, self._session.round_seconds)
            settling = settle_rounds(fn, window_seconds)
            record.settling = {meter.name: settling for meter in timing}
            record.torch_threads = _torch_threads()
            self._measure_rounds(fn, timing, rounds, settling.calls_per_round, record)
        if counting:
            self._measure_rounds(fn, counting, 1, 1, record)
        self.inference_record = record
        return record

    def _measure_rounds(
        self, fn: Callable[[], Any], meters: list, rounds: int, calls: int, record: InferenceRecord
    ) -> None:
        __tracebackhide__ = True
        for meter in meters:
            record.calls_per_round[meter.name] = calls
            record.rounds[meter.name] = []
        for _ in range(rounds):
            with self._session.window("energy.inference()", meters, across_ranks=False) as readings:
                for _ in range(calls):
                    _call(fn, "energy.inference(fn)")
            for name, reading in readings.items():
                record.rounds[name].append(reading)

    def repeat_training(self) -> None:
        """Get ready to run the test body again, to measure training noise.

        ``--energy-train-rounds N`` runs the body N times. The first run stays the test's
        result; each repeat's train phases go to ``train_repeats``, and its ``inference()``
        calls the function once, unmeasured. Call ``end_repeats()`` after the last run.
        """
        if self._first_run is None:
            self._first_run = (self.phases, self.inference_record, self._accuracy)
        else:
            self.train_repeats.append(self.phases)
        self.phases, self.inference_record, self._phase_names = [], None, set()
        self._inference_called = False

    def end_repeats(self) -> None:
        """Keep the last repeat's phases and restore the first run as the test's result."""
        if self._first_run is not None:
            self.train_repeats.append(self.phases)
            self.phases, self.inference_record, self._accuracy = self._first_run
            self._first_run = None

    def result(self, outcome: str = "passed") -> dict[str, Any]:
        """This test's JSON-ready record (see ``pytest_energy.results``)."""
        record = lifecycle_result(
            self.settings, self.phases, self.inference_record, self._accuracy, outcome
        )
        if self.accuracy_interval is not None:
            record["accuracy_interval"] = dict(self.accuracy_interval)
        record["warnings"] = [
            *record["warnings"],
            *zero_inference_warnings(record),
            *self._uncounted_warnings(),
        ]
        record["latency"] = latency_summary(record)
        self._add_breakdown(record)
        for meter, view in record["meters"].items():
            if meter in self._not_measured:
                view["inference_not_measured"] = self._not_measured[meter]
            if self.train_repeats:
                view["train_repeats"] = {
                    "tec_joules": [
                        float(sum(p.readings[meter].joules for p in run if meter in p.readings))
                        for run in (self.phases, *self.train_repeats)
                    ]
                }
        return record

    def _uncounted_warnings(self) -> list[str]:
        """One line per window in which a counted reading met operators it has no formula for."""
        from pytest_energy.meters.counted import uncounted_warning

        windows = [(f"train phase {p.name!r}", p.readings) for p in self.phases]
        if self.inference_record is not None:
            windows += [
                ("inference", {name: readings[0]})
                for name, readings in self.inference_record.rounds.items()
                if readings
            ]
        lines = []
        for where, readings in windows:
            for reading in readings.values():
                if reading.capabilities.counts_operations and (
                    warning := uncounted_warning(reading)
                ):
                    lines.append(f"{reading.meter} {where}: {warning}")
        return lines

    def _add_breakdown(self, record: dict[str, Any]) -> None:
        """``--energy-breakdown``: counted's inference per operator and module, per sample."""
        inference = self.inference_record
        view = record["meters"].get("counted", {}).get("inference")
        if not self._session.meter_options.counted_breakdown or inference is None or not view:
            return
        rounds = inference.rounds.get("counted") or []
        samples = inference.calls_per_round.get("counted", 1) * inference.samples_per_call
        breakdown = inference_breakdown(rounds[0], samples) if rounds else None
        if breakdown is not None:
            view["breakdown"] = breakdown

    @property
    def measured_anything(self) -> bool:
        return bool(self.phases) or self.inference_record is not None


class TrainWindow:
    """``with energy.train(phase):`` as one flat object rather than nested generators.

    Users open one per phase and often one per epoch, so its edges cost what the meters' edges
    cost and little more. The phase is recorded only when its body finishes without an error.
    """

    __slots__ = ("_energy", "_measured", "_phase", "_readings")

    def __init__(self, energy: EnergyFixture, phase: str) -> None:
        self._energy = energy
        self._phase = phase
        self._measured: Any = None
        self._readings: Mapping[str, Any] = {}

    def __enter__(self) -> None:
        __tracebackhide__ = True
        energy, phase = self._energy, self._phase
        label = f"energy.train({phase!r})"
        energy._claim_phase_name(phase, label)
        energy._open(label)
        energy.live.begin(phase)
        if not energy.enabled:
            return
        try:
            measured = energy._session.window(label)
            self._readings = measured.__enter__()
            self._measured = measured
            energy._steps = StepRecorder(energy._session.meters)
        except BaseException:
            self._close()
            raise

    def __exit__(self, error_type: Any, error: Any, traceback: Any) -> None:
        energy = self._energy
        steps = energy._steps
        self._close(error_type, error, traceback)
        if error_type is None and self._measured is not None and steps is not None:
            readings = steps.annotate(self._readings)  # energy per step from progress() calls
            energy.phases.append(PhaseRecord(name=self._phase, charged=False, readings=readings))

    def _close(self, *error_info: Any) -> None:
        energy = self._energy
        energy._steps = None
        try:
            if self._measured is not None:
                self._measured.__exit__(*(error_info or (None, None, None)))
        finally:
            energy._open_window = None
            energy.live.end()


def energy_fixture_with(
    meters: list[Any], where: str, rounds: int = 1, warmup_calls: int = 1
) -> EnergyFixture:
    """The ``energy`` fixture as a test gets it under ``--energy`` with ``meters``, built
    outside pytest (overhead benchmarks, the GPU check, unit tests)."""
    from pytest_energy.meters import MeterSelection

    session = EnergySession(
        enabled=True,
        selection=MeterSelection(meters=list(meters)),
        defaults=LifecycleSettings(),
        rounds=rounds,
        warmup_calls=warmup_calls,
    )
    return EnergyFixture(session, LifecycleSettings(), where)


SETTLE_TOLERANCE = 0.05
"""Warm-up ends when two batches in a row agree on the seconds per call within this share."""
SETTLE_MAX_SECONDS = 1.0
"""Warm-up by time gives up after this long (or three meter windows, if longer): the rounds
then start unsettled, and the record says so (``settled: false``)."""


def round_window_seconds(meters: Sequence[Any], chosen_seconds: float | None = None) -> float:
    """How long each timed round lasts: the user's ``--energy-round-seconds`` or each meter's
    ``round_seconds``, never below what a meter resolves (``min_window_seconds``)."""
    return max(
        max(meter.min_window_seconds, chosen_seconds or meter.round_seconds) for meter in meters
    )


def settle_rounds(fn: Callable[[], Any], window_seconds: float) -> Settling:
    """Size a round and warm up by time until the seconds per call settle.

    Like ``timeit.Timer.autorange``, a batch grows (at most tenfold a step) until it lasts the
    window, so one slow first call cannot make every round too short. Then batches of that size
    repeat until two in a row agree within ``SETTLE_TOLERANCE`` (caches, allocator pools,
    oneDNN primitives and clocks warm up over time, not over a fixed number of calls), at most
    ``SETTLE_MAX_SECONDS``.
    """
    __tracebackhide__ = True
    started = time.perf_counter()
    budget_seconds = max(SETTLE_MAX_SECONDS, 3 * window_seconds)
    calls, previous_per_call = 1, None
    while True:
        batch_started = time.perf_counter()
        for _ in range(calls):
            _call(fn, "energy.inference(fn) while warming up")
        now = time.perf_counter()
        elapsed = now - batch_started
        if elapsed < window_seconds:
            wanted = math.ceil(calls * 1.2 * window_seconds / max(elapsed, 1e-9))
            calls, previous_per_call = min(max(wanted, calls + 1), calls * 10), None
            continue
        per_call = elapsed / calls
        if previous_per_call is not None and abs(per_call - previous_per_call) <= (
            SETTLE_TOLERANCE * previous_per_call
        ):
            return Settling(calls, now - started, settled=True)
        if now - started >= budget_seconds:
            return Settling(calls, now - started, settled=False)
        previous_per_call = per_call


def _torch_threads() -> int | None:
    """torch's intra-op threads as the rounds run (None when torch is not imported)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def spinning_threads_note(results: Mapping[str, Mapping[str, Any]]) -> str | None:
    """One line when a CPU-side meter timed inference while torch ran several intra-op threads.

    Idle OpenMP workers spin-wait between operators and CPU meters charge it; on a CPU shared
    with other processes a worker that waits for a descheduled peer spins all the while, so
    figures swing several-fold between sessions (``python -m benchmarks.measurement_noise``).
    The user's thread setting is theirs: this says so instead of changing it.
    """
    threads_by_meter: dict[str, int] = {}
    for record in results.values():
        for meter, view in (record.get("meters") or {}).items():
            threads = (view.get("inference") or {}).get("torch_threads") or 0
            if meter not in GPU_METERS and threads > 1:
                threads_by_meter[meter] = max(threads, threads_by_meter.get(meter, 0))
    if not threads_by_meter:
        return None
    return (
        f"{', '.join(sorted(threads_by_meter))} timed inference with torch running "
        f"{max(threads_by_meter.values())} intra-op threads: idle OpenMP workers spin-wait and "
        f"are charged, and on a CPU shared with other processes the figures swing several-fold "
        f"between sessions. To gate on them, run one thread (OMP_NUM_THREADS=1 or "
        f"torch.set_num_threads(1)) or compare interleaved sessions with `pytest-energy ab`."
    )


def zero_inference_warnings(record: dict[str, Any]) -> list[str]:
    """An IEC of 0 J is named, never passed off as free inference (as 0 J phases are)."""
    warnings = []
    for meter, view in record["meters"].items():
        if view.get("iec_joules_per_sample") == 0:
            why = (
                "no torch operator ran in it"
                if capabilities(str(view.get("kind"))).counts_operations
                else "shorter than the meter resolves, or the counter did not update"
            )
            warnings.append(f"{meter}: inference read 0 J per sample ({why})")
    return warnings


def _call(fn: Callable[[], Any], what: str) -> Any:
    """Call user code; its own exception propagates with a note saying where it was called.

    A function that returns a generator or a coroutine did no work: refused, so that a lazy
    ``lambda: (model(x) for x in batch)`` never measures as a cheap model.
    """
    __tracebackhide__ = True
    try:
        result = fn()
    except Exception as error:
        if hasattr(error, "add_note"):
            error.add_note(f"(raised inside {what})")
        raise
    if inspect.isgenerator(result) or inspect.iscoroutine(result) or inspect.isasyncgen(result):
        with contextlib.suppress(Exception):
            result.close()
        raise MeasurementError(
            f"{what} returned a {type(result).__name__} without running it, so no inference "
            f"was done; return the outputs instead (e.g. list(...) of a generator, or run "
            f"the coroutine)"
        )
    return result
