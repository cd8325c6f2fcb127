"""Does the gate cry wolf, and does it catch real rises? Measured on separate pytest sessions.

Run with ``python -m benchmarks.false_alarms`` (defaults: cputime, torch's default threads and
one thread, 25 sessions each). A small CNN lifecycle test written the way a user writes one
(a few SGD steps of a two-layer conv net on a synthetic batch, then inference rounds) runs in a
stream of fresh ``python -m pytest`` sessions, nothing changed between them. Each session holds
three versions of the test: the work as is, +10 % and +25 % more training steps and inference
work per sample (``test_cnn[1.00]``, ``[1.10]``, ``[1.25]``).

From that stream the gate's own rules (``pytest_energy.gate.compare``) judge:

- **history mode**: a baseline of the ``--keep`` sessions before session r (their
  ``test_cnn[1.00]`` figures, as ``pytest-energy record`` writes them) against session r's
  ``[1.00]`` (an A/A run: any regression is a false alarm), ``[1.10]`` and ``[1.25]``
  (detections). One run per session after the first ``--keep``, windows sliding.
- **history, M sessions** (``--head-sessions``, default 3): the same windows against the next M
  sessions judged together, as ``pytest-energy check --sessions M`` judges them.
- **A/B mode**: consecutive sessions form pairs, the side of each drawn at random (RMIT, as
  ``pytest-energy ab`` runs them); ``--pairs`` consecutive pairs make one A/B run: base
  ``[1.00]`` against head ``[1.00]`` (A/A), ``[1.10]`` or ``[1.25]``. Runs are disjoint groups
  of pairs (independent); with fewer than ``--min-ab-runs`` of them, a second row judges sliding
  windows of pairs too (overlapping, so not independent: the row says so).

- **A/B interleaved against one after another** (``--interleave``): pairs of sessions run two
  at a time, taking turns window by window as ``pytest-energy ab --interleave`` runs them, and
  pairs run one after the other, alternately (``--sessions`` each way), so both ways see the
  same stretch of the machine's day; each pair is one A/B pair (sides drawn at random), judged
  as above, one row per way. No history rows. Pass ``--interleave`` again with ``--replay``.

``--json`` keeps each session's records besides the verdicts, and ``--replay PATH`` judges a
saved stream again with the current rules, without running a session. It prints per thread
setting and mode: false alarms out of the A/A runs, the share of +10 % and
+25 % runs caught, the median smallest detectable change the verdicts printed (TEC and IEC) and
the largest A/A change seen, so the two can be checked against each other. A "regression" here
is the gate's verdict on the test (TEC, IEC or E(MUI) beyond tolerance and noise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from pytest_energy.gate.compare import Provenance, Recorded, compare_meter
from pytest_energy.gate.profiles import make_profile
from pytest_energy.gate.sessions import session_item
from pytest_energy.turns import TURNS_VARIABLE, wait_for_sides

SCALES = ("1.00", "1.10", "1.25")
WORKLOAD = textwrap.dedent(
    """
    import pytest
    import torch
    from torch import nn

    torch.manual_seed(0)
    BATCH = 32


    def small_cnn():
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
        )


    @pytest.mark.lifecycle(usage=[1e4, 1e6], tolerance=0.05, family="a-a", method="cnn")
    @pytest.mark.parametrize("scale", {scales})
    def test_cnn(energy, scale):
        factor = float(scale)
        model = small_cnn()
        images, labels = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
        optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
        with energy.train("train"):
            for _ in range(round({steps} * factor)):
                optimiser.zero_grad()
                nn.functional.cross_entropy(model(images), labels).backward()
                optimiser.step()
        model.eval()
        # More work per sample: a bigger batch through the model, the same samples counted.
        batch = torch.randn(round(BATCH * factor), 3, 32, 32)
        with torch.no_grad():
            energy.inference(lambda: model(batch), samples=BATCH)
    """
)


def _command(directory: Path, results: Path, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        str(directory),
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(directory),
        "--energy",
        "--energy-meter",
        args.meter,
        "--energy-rounds",
        str(args.rounds),
        "--energy-baselines",
        str(directory / "none"),
        f"--energy-json={results}",
    ]


def _interleaved_pair(
    directory: Path, environment: Mapping[str, str], args: argparse.Namespace, index: int
) -> list[dict[str, Any]]:
    """Two sessions at once taking turns window by window, as ``ab --interleave`` runs them."""
    turn_file = directory / f"turns-{index}"
    turn_file.write_text("0")
    processes, paths = [], []
    for role in (0, 1):
        paths.append(directory / f"results-{role}.json")
        side_environment = {**environment, TURNS_VARIABLE: f"{turn_file}:{role}"}
        processes.append(
            subprocess.Popen(
                _command(directory, paths[-1], args),
                cwd=directory,
                env=side_environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    wait_for_sides(processes, turn_file)
    if any(process.returncode != 0 for process in processes):
        raise SystemExit(f"an interleaved session failed: {[p.returncode for p in processes]}")
    return [json.loads(path.read_text()) for path in paths]


def _workload(directory: Path, threads: str, args: argparse.Namespace) -> dict[str, str]:
    """Write the workload into ``directory``; the sessions' environment."""
    (directory / "test_cnn.py").write_text(
        WORKLOAD.format(scales=repr(list(SCALES)), steps=args.steps)
    )
    environment = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    if threads != "default":
        environment["OMP_NUM_THREADS"] = threads
    if args.omp_wait_policy:
        environment["OMP_WAIT_POLICY"] = args.omp_wait_policy
    return environment


def _session(
    directory: Path, environment: Mapping[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    results = directory / "results.json"
    completed = subprocess.run(
        _command(directory, results, args),
        cwd=directory,
        env=dict(environment),
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"session failed ({completed.returncode}):\n{completed.stdout}")
    return json.loads(results.read_text())


def run_stream(threads: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``args.sessions`` fresh pytest sessions of the workload; their results documents."""
    documents = []
    with tempfile.TemporaryDirectory(prefix="energy-false-alarms-") as name:
        directory = Path(name)
        environment = _workload(directory, threads, args)
        for index in range(args.sessions):
            started = time.monotonic()
            documents.append(_session(directory, environment, args))
            print(
                f"  threads {threads}: session {index + 1}/{args.sessions} "
                f"({time.monotonic() - started:.1f} s)",
                flush=True,
            )
    return documents


def run_side_by_side(threads: str, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """``--interleave``: pairs run interleaved and pairs run one after another, alternately.

    ``args.sessions`` sessions each way; which way goes first alternates from pair to pair, so
    both see the same stretch of the machine's day. Consecutive documents are one pair.
    """
    streams: dict[str, list[dict[str, Any]]] = {
        f"{threads}, interleaved": [],
        f"{threads}, one after another": [],
    }
    with tempfile.TemporaryDirectory(prefix="energy-false-alarms-") as name:
        directory = Path(name)
        environment = _workload(directory, threads, args)
        for index in range(0, args.sessions, 2):
            started = time.monotonic()
            ways = list(streams)
            for way in ways if index % 4 == 0 else ways[::-1]:
                if way.endswith("interleaved"):
                    streams[way].extend(_interleaved_pair(directory, environment, args, index))
                else:
                    streams[way].extend(_session(directory, environment, args) for _ in range(2))
            print(
                f"  threads {threads}: pair {index // 2 + 1}/{(args.sessions + 1) // 2} each way "
                f"({time.monotonic() - started:.1f} s)",
                flush=True,
            )
    return streams


def _kept(document: Mapping[str, Any], meter: str) -> dict[str, Any]:
    """What a replay needs of one session: its machine versions and the workload's records."""
    return {
        "machine": {"versions": document["machine"]["versions"]},
        "tests": {
            f"test_cnn.py::test_cnn[{scale}]": _record(document, scale, meter) for scale in SCALES
        },
    }


def _replayed(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The session streams a previous ``--json`` saved, by thread setting."""
    try:
        return json.loads(path.read_text())["sessions"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(
            f"--replay {path}: not a false_alarms --json file with sessions ({error})"
        ) from error


def _record(document: Mapping[str, Any], scale: str, meter: str) -> dict[str, Any]:
    return dict(document["tests"][f"test_cnn.py::test_cnn[{scale}]"])


def _recorded(
    records: Sequence[Mapping[str, Any]], meter: str, versions: Mapping[str, Any]
) -> Recorded:
    """The last record, holding every record's figures as its sessions."""
    last = dict(records[-1])
    last["sessions"] = [
        session_item(record["meters"][meter], record["usage"], {}) for record in records
    ]
    kind = last["meters"][meter]["kind"]
    profile = make_profile(meter, kind, {"cpu_model": "this machine", "cpu_threads": 0})
    return Recorded(last, Provenance(source="stream", profile=profile, versions=versions))


def _judge(
    base: Recorded, head: Recorded, meter: str, paired: bool, head_sessions: int = 1
) -> dict[str, Any]:
    compared = compare_meter(
        meter, head, base, gating=True, paired=paired, head_sessions=head_sessions
    )
    figures = {q.quantity: q for q in compared.quantities}
    return {
        "verdict": compared.verdict,
        "detectable_tec": figures["tec"].detectable_percent,
        "detectable_iec": figures["iec"].detectable_percent,
        "change_tec": figures["tec"].change_percent,
        "change_iec": figures["iec"].change_percent,
    }


def history_runs(
    documents: Sequence[Mapping[str, Any]], args: argparse.Namespace, head_sessions: int = 1
) -> dict:
    """A baseline of the ``--keep`` sessions before, against the next ``head_sessions``."""
    versions = documents[0]["machine"]["versions"]
    runs: dict[str, list[dict[str, Any]]] = {scale: [] for scale in SCALES}
    for index in range(args.keep, len(documents) - head_sessions + 1):
        window = [_record(document, "1.00", args.meter) for document in documents[:index]]
        base = _recorded(window[-args.keep :], args.meter, versions)
        for scale in SCALES:
            heads = [
                _record(document, scale, args.meter)
                for document in documents[index : index + head_sessions]
            ]
            head = _recorded(heads, args.meter, versions)
            runs[scale].append(_judge(base, head, args.meter, False, head_sessions))
    how = f"baseline of {args.keep} sessions, windows sliding"
    if head_sessions > 1:
        how += f"; this run {head_sessions} sessions (pytest-energy check --sessions)"
    return {"runs": runs, "how": how}


def ab_runs(documents: Sequence[Mapping[str, Any]], args: argparse.Namespace) -> dict:
    """A/B runs of ``args.pairs`` pairs each: disjoint groups of pairs (independent runs), and
    when there are fewer than ``--min-ab-runs`` of them, sliding windows besides (overlapping,
    so their counts are correlated; printed as a second row)."""
    versions = documents[0]["machine"]["versions"]
    sides = random.Random(args.seed)
    pairs = []
    for index in range(0, len(documents) - 1, 2):
        first, second = documents[index], documents[index + 1]
        pairs.append((first, second) if sides.random() < 0.5 else (second, first))

    def judged(starts: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
        runs: dict[str, list[dict[str, Any]]] = {scale: [] for scale in SCALES}
        for start in starts:
            chosen = pairs[start : start + args.pairs]
            base = _recorded(
                [_record(b, "1.00", args.meter) for b, _ in chosen], args.meter, versions
            )
            for scale in SCALES:
                head = _recorded(
                    [_record(h, scale, args.meter) for _, h in chosen], args.meter, versions
                )
                runs[scale].append(_judge(base, head, args.meter, paired=True))
        return runs

    groups = len(pairs) // args.pairs
    results = {
        "A/B": {
            "runs": judged([args.pairs * g for g in range(groups)]),
            "how": f"{args.pairs} pairs per run, disjoint groups, {len(pairs)} pairs",
        }
    }
    if groups < args.min_ab_runs and len(pairs) > args.pairs:
        results["A/B sliding"] = {
            "runs": judged(range(len(pairs) - args.pairs + 1)),
            "how": f"{args.pairs} pairs per run, sliding windows (overlapping: not independent)",
        }
    return results


def _summary(threads: str, mode: str, result: Mapping[str, Any]) -> list[Any]:
    runs = result["runs"]
    a_a = runs["1.00"]

    def caught(scale: str) -> str:
        hits = sum(run["verdict"] == "regressed" for run in runs[scale])
        return f"{hits} / {len(runs[scale])}"

    def median(key: str) -> str:
        values = [run[key] for run in a_a if run[key] is not None]
        return f"{statistics.median(values):.0f} %" if values else "—"

    def largest(key: str) -> str:
        values = [abs(run[key]) for run in a_a if run[key] is not None]
        return f"{max(values):.0f} %" if values else "—"

    alarms = sum(run["verdict"] == "regressed" for run in a_a)
    return [
        threads,
        mode,
        f"{alarms} / {len(a_a)}",
        caught("1.10"),
        caught("1.25"),
        median("detectable_tec"),
        median("detectable_iec"),
        largest("change_tec"),
        largest("change_iec"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.false_alarms", description=__doc__)
    parser.add_argument("--sessions", type=int, default=25, help="sessions per thread setting")
    parser.add_argument("--threads", default="default,1", help="comma list: default and/or N")
    parser.add_argument("--meter", default="cputime", help="the noisy meter (default cputime)")
    parser.add_argument("--keep", type=int, default=5, help="baseline sessions (history mode)")
    parser.add_argument(
        "--head-sessions",
        type=int,
        default=3,
        help="sessions of the run judged in a second history row (pytest-energy check)",
    )
    parser.add_argument("--pairs", type=int, default=5, help="pairs per A/B run")
    parser.add_argument("--min-ab-runs", type=int, default=20, help="disjoint A/B runs wanted")
    parser.add_argument("--rounds", type=int, default=5, help="inference rounds per session")
    parser.add_argument("--steps", type=int, default=8, help="SGD steps at scale 1.00")
    parser.add_argument("--seed", type=int, default=0, help="seed of the A/B sides")
    parser.add_argument(
        "--omp-wait-policy",
        choices=["passive", "active"],
        help="set OMP_WAIT_POLICY in the sessions (default: leave the environment's)",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="run the sessions two at a time, taking turns window by window (pytest-energy ab "
        "--interleave); only A/B runs are judged, on those pairs",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write every verdict and each session's records"
    )
    parser.add_argument(
        "--replay",
        metavar="PATH",
        help="judge the sessions a previous --json saved instead of running new ones",
    )
    args = parser.parse_args(argv)
    streams = _replayed(Path(args.replay)) if args.replay else None
    rows, everything, saved, sessions, torch = [], {}, {}, 0, "?"
    settings = [part.strip() for part in args.threads.split(",") if part.strip()]
    if streams is None:
        streams = {}
        for threads in settings:
            if args.interleave:
                streams.update(run_side_by_side(threads, args))
            else:
                streams[threads] = run_stream(threads, args)
    for threads, documents in streams.items():
        saved[threads] = [_kept(document, args.meter) for document in documents]
        sessions = len(documents)
        torch = documents[0]["machine"]["versions"].get("torch") or "?"
        modes = {}
        if not args.interleave:
            modes["history"] = history_runs(documents, args)
            if args.head_sessions > 1:
                modes[f"history, {args.head_sessions} sessions"] = history_runs(
                    documents, args, args.head_sessions
                )
        modes.update(ab_runs(documents, args))
        for mode, result in modes.items():
            everything[f"{threads}/{mode}"] = result
            rows.append(_summary(threads, mode, result))
            print(f"  threads {threads}, {mode}: {result['how']}", flush=True)
    print()
    print(
        tabulate(
            rows,
            headers=[
                "threads",
                "mode",
                "A/A false alarms",
                "+10 % caught",
                "+25 % caught",
                "MDC TEC (median)",
                "MDC IEC (median)",
                "max A/A |ΔTEC|",
                "max A/A |ΔIEC|",
            ],
        )
    )
    print(
        f"\n{args.meter}, {sessions} pytest sessions per thread setting, tolerance 5 %, "
        f"α = 0.01 each side, {args.rounds} inference rounds, {args.steps} SGD steps; "
        f"torch {torch}, {os.cpu_count()} CPU threads; history: {args.keep} baseline "
        f"sessions; A/B: {args.pairs} pairs; OMP_WAIT_POLICY "
        f"{args.omp_wait_policy or os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    if args.json:
        document = {"verdicts": everything, "sessions": saved}
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
