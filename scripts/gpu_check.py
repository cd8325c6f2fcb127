"""``make gpu-check``: one prepared run that checks pytest-energy on a real NVIDIA GPU.

GPU time is rare and short here, so everything the GPU should tell us runs from this one
command, in at most eight minutes, with the machine's own Python and nothing installed:

    PYTHONPATH=. python3 -m scripts.gpu_check --out gpu-check-out

Each step runs in its own process with a time budget: a step that fails, hangs or crashes is
recorded as such and the others still run; the report (``gpu-check.json`` and
``gpu-check.md`` in ``--out``) is always written and the markdown table printed. On a machine
where NVML sees no GPU the script prints one line saying why it skipped and exits 0.

The plugin is not installed there: when pytest cannot find the ``pytest11`` entry point, the
script writes a metadata-only ``pytest_energy.dist-info`` folder (entry points, no code) into a
temporary directory on ``PYTHONPATH``, so every pytest the steps start, pytester's inner runs
included, loads ``pytest_energy.plugin`` from this checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.gpu_check_report import Figure, Report, StepOutcome, markdown, write_report
from scripts.gpu_check_steps import interruptible

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_OUT = "gpu-check-out"
DEFAULT_TOTAL_SECONDS = 420.0
"""The whole run's limit (7 min): under the issue's 8, leaving a GPU lease room to rerun steps."""
GRACE_SECONDS = 15.0
"""How long past its budget a step process may take to wind down before it is stopped."""
MIN_STEP_SECONDS = 10.0
REPORT_RESERVE_SECONDS = 3.0


@dataclass(frozen=True)
class Step:
    """One part of the check: a ``module:function`` taking a ``StepContext``, with a budget."""

    name: str
    title: str
    target: str
    budget_seconds: float


STEPS: tuple[Step, ...] = (
    Step(
        "environment",
        "torch / CUDA / cuDNN / NCCL versions and a CUDA round trip",
        "scripts.gpu_check_steps:environment",
        20,
    ),
    Step(
        "nvml-tests",
        "tests/test_meter_nvml.py against the real driver",
        "scripts.gpu_check_steps:nvml_tests",
        35,
    ),
    Step(
        "nvml-counter",
        "energy counter vs integrated power over GEMM and CNN-training windows of 1-5 s, "
        "the counter's update period, the power-polling fallback, the cost of a window",
        "scripts.gpu_check_steps:nvml_counter",
        95,
    ),
    Step(
        "counted-overhead",
        "counted's slowdown of a ResNet-56 training step at batch 128, and the cost of an "
        "energy.train window as a user opens it",
        "scripts.gpu_check_steps:counted_overhead",
        55,
    ),
    Step(
        "paper-dry-run",
        "paper-scale benchmark in dry-run mode: reference + one method per family, nvml + counted",
        "scripts.gpu_check_steps:paper_dry_run",
        125,
    ),
    Step(
        "aa-pair",
        "an A/A pair of sessions with nvml (pytest-energy ab, else two sessions + compare)",
        "scripts.gpu_check_steps:aa_pair",
        85,
    ),
)


class StepContext:
    """What a step sees: its deadline, where to write, and where its figures go.

    Every ``add`` and ``note`` is saved at once (when the step runs in its own process), so a
    step stopped at its deadline still hands over every figure it had.
    """

    def __init__(
        self,
        step: str,
        out_dir: Path,
        budget_seconds: float,
        save: Callable[[StepContext], None] | None = None,
        environment: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.step = step
        self.out_dir = out_dir
        self.deadline = time.monotonic() + budget_seconds
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self.failed_parts: list[str] = []
        self.environment = environment if environment is not None else dict(os.environ)
        self.python = python
        self._save = save

    def seconds_left(self) -> float:
        """Seconds until this step's deadline (negative once past it)."""
        return self.deadline - time.monotonic()

    def add(
        self,
        name: str,
        value: Any,
        unit: str = "",
        kind: str = "measured",
        target: str = "",
        ok: bool | None = None,
        note: str = "",
    ) -> Figure:
        """Record one figure."""
        if hasattr(value, "item"):  # numpy / torch scalars
            value = value.item()
        figure = Figure(self.step, name, value, unit, kind, target, ok, note)
        self.figures.append(figure)
        self.saved()
        return figure

    def note(self, text: str) -> None:
        """Record a sentence about how the step ran (shown beside its status)."""
        self.notes.append(text)
        self.saved()

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Run one part of a step; an error there is noted and the step goes on."""
        try:
            yield
        except Exception as error:
            self.failed_parts.append(name)
            self.note(f"{name} failed: {type(error).__name__}: {_one_line(error)}")

    def saved(self) -> None:
        if self._save is not None:
            self._save(self)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("…" if len(text) > 300 else "")


def resolve_target(target: str) -> Callable[[StepContext], Any]:
    """The function a ``module:function`` target names."""
    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_step_inline(
    step: Step, out_dir: Path, budget_seconds: float
) -> tuple[StepOutcome, list[Figure]]:
    """Run a step in this process; an exception fails the step, not the run.

    The budget is only watched here (a step reads ``seconds_left``): a step that overruns it is
    marked ``timeout`` with the figures it made. ``run_step_isolated`` also enforces it.
    """
    context = StepContext(step.name, out_dir, budget_seconds)
    started = time.monotonic()
    status, error = "ok", ""
    try:
        resolve_target(step.target)(context)
    except Exception as failure:
        status, error = "failed", f"{type(failure).__name__}: {_one_line(failure)}"
    seconds = time.monotonic() - started
    if status == "ok" and context.failed_parts:
        status, error = "failed", "failed parts: " + ", ".join(context.failed_parts)
    if status == "ok" and seconds > budget_seconds:
        status, error = "timeout", f"took {seconds:.1f} s, over its {budget_seconds:.0f} s budget"
    outcome = StepOutcome(
        step.name, step.title, status, seconds, budget_seconds, error, tuple(context.notes)
    )
    return outcome, context.figures


def _write_step_file(path: Path, context: StepContext, status: str, error: str) -> None:
    document = {
        "status": status,
        "error": error,
        "notes": context.notes,
        "failed_parts": context.failed_parts,
        "figures": [figure.__dict__ for figure in context.figures],
    }
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, default=str), encoding="utf-8")
    os.replace(temporary, path)


def step_process_main(
    target: str, name: str, step_file: Path, out_dir: Path, seconds: float
) -> int:
    """The child side of ``run_step_isolated``: run one step, save figures as they come."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the budget's stop: see below
    holder: dict[str, str] = {"status": "running", "error": ""}

    def save(context: StepContext) -> None:
        _write_step_file(step_file, context, holder["status"], holder["error"])

    context = StepContext(name, out_dir, seconds, save=save)
    context.saved()
    try:
        resolve_target(target)(context)
        holder["status"] = "ok"
        if context.failed_parts:
            holder.update(status="failed", error="failed parts: " + ", ".join(context.failed_parts))
    except KeyboardInterrupt:
        holder.update(status="timeout", error=f"stopped at its {seconds:.0f} s budget")
    except BaseException as failure:
        traceback.print_exc()
        holder.update(status="failed", error=f"{type(failure).__name__}: {_one_line(failure)}")
    save(context)
    return 0


def _stop_process_group(process: subprocess.Popen[Any], wind_down_seconds: float) -> None:
    """Interrupt a step's process group (pytest writes its files on SIGINT), then kill it."""
    for signal_number, wait_seconds in ((signal.SIGINT, wind_down_seconds), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal_number)
        try:
            process.wait(timeout=wait_seconds)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step_isolated(
    step: Step,
    out_dir: Path,
    budget_seconds: float,
    environment: dict[str, str],
    python: str = sys.executable,
    grace_seconds: float = GRACE_SECONDS,
) -> tuple[StepOutcome, list[Figure]]:
    """Run a step in a new process group with a hard limit of budget + grace seconds.

    The step itself watches its budget (``StepContext.seconds_left``); past budget + grace the
    whole group (the step and any pytest it started) is interrupted, then killed. Figures the
    step saved before that are kept.
    """
    for folder in ("steps", "logs"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    step_file = out_dir / "steps" / f"{step.name}.json"
    step_file.unlink(missing_ok=True)
    log_path = out_dir / "logs" / f"{step.name}.log"
    command = [
        python,
        "-m",
        "scripts.gpu_check",
        "--run-step",
        step.target,
        "--step-name",
        step.name,
        "--step-file",
        str(step_file),
        "--seconds",
        f"{budget_seconds:.1f}",
        "--out",
        str(out_dir),
    ]
    started = time.monotonic()
    timed_out = False
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPOSITORY,
            env=environment,
            start_new_session=True,
            preexec_fn=interruptible,
        )
        try:
            returncode = process.wait(timeout=budget_seconds + grace_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_process_group(process, wind_down_seconds=min(10.0, grace_seconds))
            returncode = process.returncode
    seconds = time.monotonic() - started
    saved: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(step_file.read_text(encoding="utf-8"))
    status = saved.get("status", "failed")
    error = saved.get("error", "")
    if timed_out:
        status = "timeout"
        error = f"stopped after {seconds:.0f} s (budget {budget_seconds:.0f} s + grace)"
    elif status not in ("ok", "failed", "timeout"):
        status = "failed"
        error = (
            f"the step process exited with status {returncode} before finishing: "
            f"{_last_line(log_path)}"
        )
    outcome = StepOutcome(
        step.name,
        step.title,
        status,
        seconds,
        budget_seconds,
        error,
        tuple(saved.get("notes", ())),
        str(log_path.relative_to(out_dir)),
    )
    return outcome, [Figure.from_dict(item) for item in saved.get("figures", ())]


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines:
            return lines[-1][-300:]
    return "(no output)"


def run_steps(
    steps: Sequence[Step],
    out_dir: Path,
    total_seconds: float,
    isolate: bool = True,
    environment: dict[str, str] | None = None,
    python: str = sys.executable,
    progress: Callable[[str], None] = print,
    after_step: Callable[[list[StepOutcome], list[Figure]], None] | None = None,
) -> tuple[list[StepOutcome], list[Figure]]:
    """Run every step within the run's time limit; later steps shrink or skip when it runs out.

    ``after_step`` sees the outcomes and figures so far after each step (the report is
    rewritten then, so even a run killed from outside leaves one).
    """
    run_deadline = time.monotonic() + total_seconds - REPORT_RESERVE_SECONDS
    outcomes: list[StepOutcome] = []
    figures: list[Figure] = []
    for number, step in enumerate(steps, start=1):
        left = run_deadline - time.monotonic() - (GRACE_SECONDS if isolate else 0.0)
        if left < MIN_STEP_SECONDS:
            outcomes.append(
                StepOutcome(
                    step.name,
                    step.title,
                    "skipped",
                    0.0,
                    step.budget_seconds,
                    f"no time left in the run's {total_seconds:.0f} s",
                )
            )
            progress(f"gpu-check [{number}/{len(steps)}] {step.name}: skipped (no time left)")
            continue
        budget = min(step.budget_seconds, left)
        progress(f"gpu-check [{number}/{len(steps)}] {step.name} (budget {budget:.0f} s) ...")
        if isolate:
            outcome, step_figures = run_step_isolated(
                step, out_dir, budget, environment or dict(os.environ), python
            )
        else:
            outcome, step_figures = run_step_inline(step, out_dir, budget)
        figures += step_figures
        outcomes.append(outcome)
        if after_step is not None:
            after_step(outcomes, figures)
        detail = f": {outcome.error}" if outcome.error else ""
        progress(
            f"gpu-check [{number}/{len(steps)}] {step.name}: {outcome.status} "
            f"({outcome.seconds:.1f} s){detail}"
        )
    return outcomes, figures


def probe_gpu() -> tuple[str | None, dict[str, str]]:
    """Why there is no GPU to check here (``None`` when NVML sees one), and the GPU's labels."""
    try:
        from pytest_energy.errors import MeterUnavailable
        from pytest_energy.meters.nvml import NvmlMeter

        meter = NvmlMeter()
    except MeterUnavailable as unavailable:
        return str(unavailable), {}
    except Exception as error:
        return f"nvml: {type(error).__name__}: {_one_line(error)}", {}
    try:
        return None, gpu_labels(meter)
    finally:
        meter.close()


def gpu_labels(meter: Any) -> dict[str, str]:
    """GPU names, driver and CUDA driver versions, power limits and how each GPU is measured."""
    nvml = meter._nvml
    labels: dict[str, str] = {}

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    with contextlib.suppress(Exception):
        labels["driver"] = text(nvml.nvmlSystemGetDriverVersion())
    with contextlib.suppress(Exception):
        version = int(nvml.nvmlSystemGetCudaDriverVersion())
        labels["CUDA driver API"] = f"{version // 1000}.{version % 1000 // 10}"
    with contextlib.suppress(Exception):
        labels["NVML"] = text(nvml.nvmlSystemGetNVMLVersion())
    for gpu in meter.gpus:
        described = f"{gpu.name}, measured by {gpu.method}"
        with contextlib.suppress(Exception):
            limit_watts = nvml.nvmlDeviceGetEnforcedPowerLimit(gpu.handle) / 1000
            described += f", power limit {limit_watts:g} W"
        labels[f"GPU {gpu.domain}"] = described
    return labels


def software_labels() -> dict[str, str]:
    """Date, host, Python and the versions of the packages the steps use (torch is not loaded)."""
    labels = {
        "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "CPU cores": str(os.cpu_count()),
    }
    for package in (
        "torch",
        "torchvision",
        "nvidia-ml-py",
        "pytest",
        "codecarbon",
        "torch-pruning",
    ):
        try:
            labels[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            labels[package] = "not installed"
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode == 0:
            labels["commit"] = commit.stdout.strip()
    return labels


def plugin_registered() -> bool:
    """Whether pytest finds pytest-energy's ``pytest11`` entry point (i.e. it is installed)."""
    return any(
        entry.value.split(":")[0].strip() == "pytest_energy.plugin"
        for entry in importlib.metadata.entry_points(group="pytest11")
    )


def project_version(root: Path = REPOSITORY) -> str:
    """The version in pyproject.toml (``0+unknown`` when it cannot be read)."""
    with contextlib.suppress(OSError):
        found = re.search(
            r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text("utf-8"), re.M
        )
        if found:
            return found.group(1)
    return "0+unknown"


def write_plugin_shim(folder: Path, version: str) -> Path:
    """A metadata-only ``dist-info`` that registers the plugin's entry points, in ``folder``.

    With ``folder`` on ``PYTHONPATH`` next to the checkout, ``importlib.metadata`` finds the
    ``pytest11`` entry point, so pytest loads ``pytest_energy.plugin`` (from the checkout) in
    every session, pytester's included. No code is copied and nothing is installed.
    """
    dist_info = folder / f"pytest_energy-{version}.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: pytest-energy\nVersion: {version}\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        "[pytest11]\nenergy = pytest_energy.plugin\n\n"
        "[console_scripts]\npytest-energy = pytest_energy.cli:main\n",
        encoding="utf-8",
    )
    return dist_info


def step_environment(shim_folder: Path | None) -> dict[str, str]:
    """The environment of the step processes: the checkout (and shim) first on PYTHONPATH."""
    environment = dict(os.environ)
    paths = [str(REPOSITORY), *([str(shim_folder)] if shim_folder else [])]
    if environment.get("PYTHONPATH"):
        paths.append(environment["PYTHONPATH"])
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    environment.pop("PYTEST_ADDOPTS", None)
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def skip_line(reason: str, steps: Sequence[Step], out: str) -> str:
    """The one line printed where there is no GPU: why, and what would have run."""
    names = ", ".join(step.name for step in steps)
    return (
        f"gpu-check: skipped, no GPU here ({reason}); on a GPU it runs {names} "
        f"(see scripts/GPU_RUN.md) and writes gpu-check.json and gpu-check.md to {out}/"
    )


def choose_steps(only: str | None) -> list[Step]:
    """The steps ``--only`` names (all when it is not given), in their usual order."""
    if not only:
        return list(STEPS)
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = {step.name for step in STEPS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise SystemExit(
            f"gpu-check: --only: unknown step {', '.join(unknown)}; "
            f"choose from {', '.join(step.name for step in STEPS)}"
        )
    return [step for step in STEPS if step.name in wanted]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.gpu_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"folder for the report (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--total-seconds",
        type=float,
        default=DEFAULT_TOTAL_SECONDS,
        help=f"limit for the whole run (default {DEFAULT_TOTAL_SECONDS:.0f})",
    )
    parser.add_argument("--only", metavar="STEPS", help="comma list of steps to run (a rerun)")
    parser.add_argument("--list", action="store_true", help="list the steps and exit")
    parser.add_argument("--run-step", help=argparse.SUPPRESS)
    parser.add_argument("--step-name", help=argparse.SUPPRESS)
    parser.add_argument("--step-file", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out).resolve()
    if args.run_step:
        return step_process_main(
            args.run_step, args.step_name, Path(args.step_file), out_dir, args.seconds
        )
    steps = choose_steps(args.only)
    if args.list:
        for step in steps:
            print(f"{step.name:18} {step.budget_seconds:4.0f} s  {step.title}")
        return 0
    if not args.total_seconds > 0:
        print(f"gpu-check: --total-seconds must be positive, not {args.total_seconds}")
        return 2
    reason, labels = probe_gpu()
    if reason is not None:
        print(skip_line(reason, steps, args.out))
        return 0

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"gpu-check: --out {args.out}: cannot create the folder ({error})")
        return 2
    report = Report(labels={**software_labels(), **labels})
    shim_folder = None
    if not plugin_registered():
        shim_folder = Path(tempfile.mkdtemp(prefix="gpu-check-plugin-"))
        write_plugin_shim(shim_folder, project_version())
        report.labels["plugin"] = "loaded from this checkout through a dist-info entry point shim"
    else:
        report.labels["plugin"] = "installed pytest11 entry point"

    def save(outcomes: list[StepOutcome], figures: list[Figure]) -> tuple[Path, Path]:
        report.steps, report.figures = list(outcomes), list(figures)
        report.labels.update(
            {figure.name: str(figure.value) for figure in figures if figure.kind == "label"}
        )
        return write_report(report, out_dir)

    try:
        outcomes, figures = run_steps(
            steps,
            out_dir,
            args.total_seconds,
            environment=step_environment(shim_folder),
            after_step=save,
        )
    finally:
        if shim_folder is not None:
            shutil.rmtree(shim_folder, ignore_errors=True)
    json_path, markdown_path = save(outcomes, figures)
    print()
    print(markdown(report))
    print(f"gpu-check: wrote {json_path} and {markdown_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
