"""The one way pytest-energy writes a file: atomically, never over an input, with a clear error.

Every output (``--energy-json`` results, ``--energy-markdown``, ``--energy-plot`` charts,
``pytest-energy compare --json``, baselines) goes through ``atomic_output``:

- the content is written to a temporary file beside the target and renamed over it, so a
  reader (or a crash, Ctrl-C, ``kill -9``) sees the old file whole or the new one whole;
- the temporary is named ``.pytest-energy-<name>.<pid>.<random>.tmp`` so one ignore pattern
  (``.pytest-energy-*.tmp``) covers it, and a temporary left by a killed process (its pid no
  longer alive, or older than a day) is removed by the next write to the same target;
- a target that is one of the run's inputs (a baseline compared against, the results file a
  report reads) is refused, never overwritten;
- a parent that is a regular file, a directory without write permission or a full disk raise
  ``OutputError`` naming the option and the path, never a traceback;
- JSON with an infinite or NaN figure is refused naming the test and the figure
  (``non_finite_figures``), since JSON cannot hold it and a baseline must never store it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from pytest_energy.errors import OutputError

TEMPORARY_PREFIX = ".pytest-energy-"
TEMPORARY_SUFFIX = ".tmp"
GITIGNORE_PATTERN = f"{TEMPORARY_PREFIX}*{TEMPORARY_SUFFIX}"
STALE_TEMPORARY_SECONDS = 24 * 3600.0


def temporary_name(target: Path) -> str:
    """A fresh temporary's name for ``target``: ignorable by one pattern, owned by this pid."""
    return f"{TEMPORARY_PREFIX}{target.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # alive under another user, or unknowable: keep its temporary
    return True


def remove_stale_temporaries(target: Path, now: float | None = None) -> list[Path]:
    """Remove temporaries of ``target`` that a killed writer left; returns those removed.

    A temporary whose pid is not alive here, or that is older than a day (a writer on another
    host of a shared file system), is stale; a live writer's temporary is left alone.
    """
    now = time.time() if now is None else now
    removed = []
    with contextlib.suppress(OSError):
        for candidate in target.parent.glob(f"{TEMPORARY_PREFIX}{target.name}.*{TEMPORARY_SUFFIX}"):
            middle = candidate.name[len(TEMPORARY_PREFIX) + len(target.name) + 1 :]
            pid_text = middle.split(".", 1)[0]
            try:
                stale = not pid_text.isdigit() or not _pid_alive(int(pid_text))
                stale = stale or now - candidate.stat().st_mtime > STALE_TEMPORARY_SECONDS
                if stale:
                    candidate.unlink()
                    removed.append(candidate)
            except (OSError, ValueError):
                continue
    return removed


def _same_file(first: Path, second: Path) -> bool:
    try:
        return first.exists() and second.exists() and os.path.samefile(first, second)
    except OSError:
        return False


def _why(error: OSError) -> str:
    return error.strerror or str(error)


def check_output_path(
    path: str | os.PathLike[str], what: str, inputs: Collection[str | os.PathLike[str]] = ()
) -> Path:
    """Refuse, before any work, an output that would overwrite an input or cannot be a file.

    Cheap enough to call when options are parsed, so a bad path fails before hours of training.
    """
    target = Path(path)
    for source in inputs:
        if _same_file(target, Path(source)) or target.resolve() == Path(source).resolve():
            raise OutputError(
                f"{what} {os.fspath(path)!r} is also an input of this run ({os.fspath(source)}); "
                f"write the output to another path so the input is kept"
            )
    if target.is_dir():
        raise OutputError(f"{what} {os.fspath(path)!r} is a directory; give a file path")
    ancestor = target.parent
    while not ancestor.exists() and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise OutputError(
            f"{what} {os.fspath(path)!r}: {ancestor} is a regular file, not a directory; "
            f"choose another path"
        )
    return target


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    what: str,
    inputs: Collection[str | os.PathLike[str]] = (),
) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed over ``path``.

    ``what`` names the output in errors (``--energy-json``, ``baseline``). On any failure the
    temporary is removed and the old file at ``path`` is left as it was.
    """
    target = check_output_path(path, what, inputs)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{what} {os.fspath(path)!r}: cannot create {target.parent} ({_why(error)})"
        ) from None
    remove_stale_temporaries(target)
    temporary = target.parent / temporary_name(target)
    try:
        yield temporary
        if not temporary.exists():
            raise OutputError(f"{what} {os.fspath(path)!r}: nothing was written")
        with contextlib.suppress(OSError):  # keep the old file's mode, else 0644
            os.chmod(temporary, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(temporary, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(error, OutputError):
            raise
        raise OutputError(f"{what} {os.fspath(path)!r}: cannot write ({_why(error)})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def write_text_atomic(
    path: str | os.PathLike[str],
    text: str,
    what: str = "output",
    inputs: Collection[str | os.PathLike[str]] = (),
) -> Path:
    """Write ``text`` to ``path`` atomically and durably (fsync before the rename)."""
    with (
        atomic_output(path, what, inputs) as temporary,
        open(temporary, "x", encoding="utf-8") as stream,
    ):
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    return Path(path)


def non_finite_figures(document: Any, where: str = "") -> list[str]:
    """Where ``document`` holds an infinite or NaN number: ``"tests[ID].meters.x.tec_joules"``."""
    found: list[str] = []
    if isinstance(document, float) and not math.isfinite(document):
        found.append(f"{where or 'value'} = {document}")
    elif isinstance(document, Mapping):
        for key, value in document.items():
            found += non_finite_figures(value, f"{where}.{key}" if where else str(key))
    elif isinstance(document, (list, tuple)):
        for index, value in enumerate(document):
            found += non_finite_figures(value, f"{where}[{index}]")
    return found


def dump_json(document: Mapping[str, Any], what: str = "JSON") -> str:
    """Stable formatting (sorted keys, one value per line); non-finite figures are refused."""
    bad = non_finite_figures(document)
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise OutputError(
            f"{what}: not written: a figure is infinite or not a number ({shown}); "
            f"JSON cannot hold it and no file should store it — check the meter settings that "
            f"produced it (e.g. --energy-cpu-watts, usage)"
        )
    return json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json_atomic(
    path: str | os.PathLike[str],
    document: Mapping[str, Any],
    what: str = "JSON output",
    inputs: Collection[str | os.PathLike[str]] = (),
) -> Path:
    """Write ``document`` as stable JSON to ``path`` atomically (see ``dump_json``)."""
    return write_text_atomic(path, dump_json(document, f"{what} {os.fspath(path)!r}"), what, inputs)
