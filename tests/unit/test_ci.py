"""The GitHub workflow is `bash .ci/run` itself, bounded in time: CI tests what a user runs."""

from __future__ import annotations

import yaml
from conftest import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"


def test_the_workflow_runs_ci_run_itself_with_a_timeout() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    for name, job in jobs.items():
        commands = [step["run"] for step in job["steps"] if "run" in step]
        assert any("bash .ci/run" in command for command in commands), (name, commands)
        assert all("pip install" not in command for command in commands), (
            f"job {name} installs its own way; .ci/run (make) installs as a user does"
        )
        assert 0 < job["timeout-minutes"] <= 120, name
