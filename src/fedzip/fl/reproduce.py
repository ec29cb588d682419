"""Experiment plans: a base configuration and the codecs to run on it, resumable per run."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ExperimentConfig


@dataclass(frozen=True)
class PlannedRun:
    name: str
    config: ExperimentConfig


@dataclass(frozen=True)
class Plan:
    """``experiments/<name>.toml``: an ``[experiment]`` table and ``[[run]]`` entries."""

    name: str
    base: ExperimentConfig
    runs: tuple[PlannedRun, ...]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "_", name.lower()).strip("_") or "run"


def load_plan(path: str | Path, out: str | Path = "runs/paper") -> Plan:
    """Read a plan; each run's results go to ``out/<plan>/<run>``."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"plan {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"plan {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(values) - {"experiment", "run"})
    if unknown or not values.get("run"):
        raise ValueError(
            f"plan {path} needs an [experiment] table and [[run]] entries (found {sorted(values)})"
        )
    base = ExperimentConfig.from_dict(values.get("experiment", {}))
    runs, names = [], set()
    for index, entry in enumerate(values["run"]):
        entry = dict(entry)
        name = str(entry.pop("name", ""))
        if not name or slug(name) in names:
            raise ValueError(f"plan {path}: run {index + 1} needs a unique name, got {name!r}")
        names.add(slug(name))
        settings = {**base.to_dict(), "error_feedback": False, **entry}
        settings["out"] = str(Path(out) / path.stem / slug(name))
        runs.append(PlannedRun(name, ExperimentConfig.from_dict(settings)))
    return Plan(path.stem, base, tuple(runs))


def _cached(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The summary of a finished run with exactly this configuration, if there is one."""
    path = Path(cfg.out) / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return summary if summary.get("config") == cfg.to_dict() else None


def run_plan(
    plan: Plan, only: set[str] | None = None, force: bool = False, show_progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Run (or reuse) every run of ``plan``; returns run name -> summary.

    A run whose ``summary.json`` matches its configuration is not run again
    unless ``force``; ``only`` restricts which runs may execute (the others are
    still read from disk when they exist).
    """
    from rich.console import Console

    from .runner import run_experiment

    console = Console(stderr=True)
    summaries: dict[str, dict[str, Any]] = {}
    for index, run in enumerate(plan.runs, 1):
        cached = _cached(run.config)
        selected = only is None or run.name in only
        if cached is not None and not (force and selected):
            summaries[run.name] = cached
            console.print(
                f"[{index}/{len(plan.runs)}] {plan.name}/{run.name}: done earlier ({cached['wall_seconds']:.0f} s)"
            )
            continue
        if not selected:
            continue
        console.print(f"[{index}/{len(plan.runs)}] {plan.name}/{run.name}: running {run.config.label}")
        summaries[run.name] = run_experiment(run.config, show_progress)
    return summaries
