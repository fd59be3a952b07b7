"""Helpers shared by the benchmark scripts: result files with the environment recorded."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def rel(p: Path | str) -> str:
    """A path as results record it: relative to the repository when inside it."""
    p = Path(p).resolve()
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return str(p)


def repo_relative(obj: Any) -> Any:
    """JSON data as committed results may hold it: absolute paths inside the repository made
    relative to it, temporary directories written as `<tmp>/...` (nothing names this machine)."""
    if isinstance(obj, dict):
        return {k: repo_relative(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [repo_relative(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("/"):
        path, tmp = Path(obj).resolve(), Path(tempfile.gettempdir()).resolve()
        if path.is_relative_to(ROOT):
            return path.relative_to(ROOT).as_posix()
        if path.is_relative_to(tmp):
            return f"<tmp>/{path.relative_to(tmp).as_posix()}"
    return obj


def load_note() -> str:
    """The machine's load now, as results record it: a busy machine inflates absolute times."""
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    busy = "other work competed (absolute times inflated)" if load > 0.5 * cpus else "quiet"
    return f"load average {load:.1f} on {cpus} CPUs at the start ({busy})"


def write_result(name: str, data: dict[str, Any], markdown: str) -> Path:
    """Write benchmarks/results/NAME.json (data + environment) and NAME.md; return the json path."""
    from tvc.runtime.device import environment

    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": " ".join([rel(sys.argv[0]), *repo_relative(sys.argv[1:])]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(),
        **repo_relative(data),
    }
    out = RESULTS / f"{name}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, out)
    (RESULTS / f"{name}.md").write_text(result_header(payload) + markdown + "\n")
    return out


def render_result(name: str, markdown: Callable[[dict[str, Any]], str]) -> None:
    """Rewrite results/NAME.md from the recorded NAME.json (no re-measuring): for a change to
    how a benchmark words its results."""
    payload = json.loads((RESULTS / f"{name}.json").read_text())
    (RESULTS / f"{name}.md").write_text(result_header(payload) + markdown(payload) + "\n")


def result_header(payload: dict[str, Any]) -> str:
    """The lines a result's .md starts with: the command that wrote it, and the environment."""
    from tvc.environment import cpu_label

    env = payload["environment"]
    return (
        f"<!-- written by {payload['command']} on {payload['created']} -->\n"
        f"Machine: {cpu_label(env)}, {env['cpu_count']} cores; Python {env['python']}; "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        + "\n\n"
    )
