"""Where a run came from: commit, branch, time and whether the tree was dirty.

pytest-benchmark records the same four facts (its ``commit_info``) so a stored figure can be
traced to the code that produced it. Results files and baseline entries carry them under
``"run"``; a baseline saved from a tree with uncommitted changes says so (``dirty: true``),
since nobody can check out the code that produced it.

Outside a git repository (or without git) ``commit``, ``branch`` and ``dirty`` are ``None``.
A detached HEAD (as in CI checkouts of pull requests) takes the branch from the CI's
environment (``GITHUB_HEAD_REF``, ``GITHUB_REF_NAME``, ``CI_COMMIT_REF_NAME``) when set.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
from typing import Any

BRANCH_VARIABLES = ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME")


def _git(root: str | os.PathLike[str], *args: str) -> str | None:
    """stdout of ``git ARGS`` in ``root`` (stripped), ``None`` when git fails or is missing."""
    try:
        completed = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_metadata(root: str | os.PathLike[str]) -> dict[str, Any]:
    """``{commit, branch, time, dirty}`` of a run in ``root`` (any directory inside the work tree).

    ``time`` is when the run is recorded (UTC); ``dirty`` is true when tracked files differ
    from ``commit`` (untracked files, e.g. the run's own outputs, do not count).
    """
    commit = _git(root, "rev-parse", "HEAD") or None
    if commit is None:
        return {"commit": None, "branch": None, "time": utc_now(), "dirty": None}
    branch = _git(root, "symbolic-ref", "--quiet", "--short", "HEAD") or None
    if branch is None:
        branch = next((os.environ[name] for name in BRANCH_VARIABLES if os.environ.get(name)), None)
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "branch": branch,
        "time": utc_now(),
        "dirty": None if status is None else bool(status),
    }


def dirty_save_warning(run: dict[str, Any]) -> str | None:
    """The line ``--energy-save`` prints when the baselines it wrote came from a dirty tree."""
    if not run.get("dirty"):
        return None
    return (
        f"--energy-save: the baselines were recorded from a dirty tree (uncommitted changes on "
        f'top of {str(run.get("commit"))[:12]}); they say so ("dirty": true). For clean '
        f"baselines commit first, then run --energy-save again"
    )
