"""Which task each test belongs to, and each task's reference: a run of several tasks reads as
several small papers, never as one mixed table.

Methods are compared (break-even MUI, winners, Pareto fronts, charts) only with methods of the
same task. A test's task is, in order:

1. its ``task`` label (``@pytest.mark.lifecycle(task="language-modelling")``);
2. its ``dataset`` label (an MNIST CNN and a CIFAR-10 ResNet are different tasks; an LSTM and
   a Transformer on WikiText-2 are the same one);
3. its model lineage: the ``model`` (or ``teacher``, for a distilled student) of a reference
   test, named by that model (a pruned ``vit-b16`` belongs with the uncompressed ``vit-b16``);
4. else its own ``model`` label, else ``—``.

References: ``--energy-reference`` takes one spec for every task (``auto``, ``LABEL=VALUE`` or
part of a node id) and, comma-separated, per-task specs ``TASK=LABEL=VALUE`` or
``TASK=NODEID-PART`` (a node-id part holds ``::``): ``mnist=method=cnn,wikitext-2=method=lstm``.
A task without its own spec uses the run-wide one (``auto`` by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_energy.errors import ConfigError

NO_TASK = "—"
LINEAGE_LABELS = ("model", "teacher")
"""Labels that name the model a method starts from: its own, or its distillation teacher."""
_AUTO_REFERENCE_LABELS = (("family", "baseline"), ("method", "uncompressed"))


@dataclass(frozen=True)
class References:
    """The run-wide reference spec and the specs given for single tasks."""

    default: str | None = None
    """``None`` (auto), ``LABEL=VALUE`` or a node-id part."""
    by_task: Mapping[str, str] = field(default_factory=dict)

    def for_task(self, task: str) -> str | None:
        return self.by_task.get(task, self.default)


def parse_references(spec: str | None) -> References:
    """Split ``--energy-reference`` into the run-wide spec and per-task specs.

    ``"method=uncompressed"`` → every task; ``"mnist=method=cnn,lm=test_lm.py::test_lstm"``
    → two tasks, auto elsewhere; ``"auto"``/None → auto everywhere.
    """
    if spec is None or not str(spec).strip():
        return References()
    default: str | None = None
    by_task: dict[str, str] = {}
    for part in (piece.strip() for piece in str(spec).split(",")):
        if not part:
            continue
        first, _, rest = part.partition("=")
        if rest and ("=" in rest or "::" in rest):
            task, reference = first.strip(), rest.strip()
            if not task or not reference or reference.startswith("=") or reference.endswith("="):
                raise ConfigError(_bad(part))
            by_task[task] = reference
        elif default is None:
            if part.startswith("=") or part.endswith("="):
                raise ConfigError(_bad(part))
            default = None if part == "auto" else part
        else:
            raise ConfigError(
                f"--energy-reference: two run-wide references ({default!r} and {part!r}); give "
                f"one, and per-task references as TASK=LABEL=VALUE"
            )
    return References(default, by_task)


def _bad(part: str) -> str:
    return (
        f"--energy-reference: cannot read {part!r}; expected auto, LABEL=VALUE, part of a node "
        f"id, or per task TASK=LABEL=VALUE (comma-separated, e.g. mnist=method=cnn)"
    )


def labels_match(nodeid: str, labels: Mapping[str, Any], spec: str | None) -> bool:
    """Whether a test is a reference under ``spec`` (``None``: auto), from its labels."""
    if spec is None or spec == "auto":
        return any(str(labels.get(key) or "") == value for key, value in _AUTO_REFERENCE_LABELS)
    if "=" in spec and "::" not in spec:
        key, _, value = spec.partition("=")
        key, value = key.strip(), value.strip()
        if key == "method" and not labels.get("method"):
            return nodeid.rsplit("::", 1)[-1] == value
        return str(labels.get(key) or "") == value
    return spec in nodeid


def _labels(result: Mapping[str, Any]) -> Mapping[str, Any]:
    return result.get("labels") or {}


def _explicit_task(labels: Mapping[str, Any]) -> str | None:
    for key in ("task", "dataset"):
        if labels.get(key):
            return str(labels[key])
    return None


def assign_tasks(
    tests: Mapping[str, Mapping[str, Any]], references: References | str | None = None
) -> dict[str, str]:
    """Each node id's task (see the module docstring)."""
    if not isinstance(references, References):
        references = parse_references(references)
    tasks: dict[str, str] = {}
    lineage_tasks: dict[str, str] = {}  # a reference's model -> the task it names
    undecided = []
    for nodeid, result in tests.items():
        labels = _labels(result)
        explicit = _explicit_task(labels)
        if explicit is not None:
            tasks[nodeid] = explicit
            continue
        undecided.append(nodeid)
        model = str(labels.get("model") or "")
        named = [
            task for task, spec in references.by_task.items() if labels_match(nodeid, labels, spec)
        ]
        if named:
            tasks[nodeid] = named[0]
            if model:
                lineage_tasks.setdefault(model, named[0])
        elif model and labels_match(nodeid, labels, references.default):
            lineage_tasks.setdefault(model, model)
    for nodeid in undecided:
        if nodeid in tasks:
            continue
        labels = _labels(tests[nodeid])
        lineage = [str(labels[key]) for key in LINEAGE_LABELS if labels.get(key)]
        found = next((lineage_tasks[model] for model in lineage if model in lineage_tasks), None)
        tasks[nodeid] = found or (lineage[0] if lineage else NO_TASK)
    return tasks


def task_order(tasks: Mapping[str, str]) -> list[str]:
    """The tasks of a run, sorted by name (``—`` last)."""
    return sorted(set(tasks.values()), key=lambda task: (task == NO_TASK, task))
