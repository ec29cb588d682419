"""Experiment plans: a base configuration and the runs made from it, resumable run by run."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import legacy
from .config import SECTIONS, ExperimentConfig


@dataclass(frozen=True)
class PlannedRun:
    name: str
    config: ExperimentConfig
    seed: int | None = None  # set when the plan repeats every run over several seeds

    @property
    def label(self) -> str:
        return self.name if self.seed is None else f"{self.name} (seed {self.seed})"


@dataclass(frozen=True)
class Plan:
    """A plan file ``<name>.toml``: an ``[experiment]`` table and ``[[run]]`` entries.

    ``seeds = [0, 1, 2]`` in the ``[experiment]`` table repeats every run
    once per seed (data partition, initialisation, client sampling and local
    training all follow the seed); each lands in ``<run>/seed-<k>``.
    """

    name: str
    base: ExperimentConfig
    runs: tuple[PlannedRun, ...]
    seeds: tuple[int, ...] = ()
    reference: str = ""  # another plan whose FedAvg run is this plan's reference (``reference = "..."``)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "_", name.lower()).strip("_") or "run"


# Where a plan's runs go unless the caller says otherwise: runs/<plan>/<run>[/seed-<k>].
RUNS_OUT = "runs"


def load_plan(path: str | Path, out: str | Path | None = None) -> Plan:
    """Read a plan; each run's results go to ``out/<plan>/<run>`` (default :data:`RUNS_OUT`)."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"plan {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"plan {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(values) - {"experiment", "run", "reference"})
    if unknown or not values.get("run"):
        raise ValueError(
            f"plan {path} needs an [experiment] table and [[run]] entries (found {sorted(values)})"
        )
    experiment = dict(values.get("experiment", {}))
    seeds = experiment.pop("seeds", None)
    if seeds is not None and (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ValueError(f"plan {path}: seeds must be a list of distinct integers >= 0, got {seeds!r}")
    base = ExperimentConfig.from_dict(experiment)
    flat = legacy.is_flat(experiment) or any(legacy.is_flat(entry) for entry in values["run"])
    out = out or RUNS_OUT
    runs, names = [], set()
    for index, entry in enumerate(values["run"]):
        entry = dict(entry)
        name = str(entry.pop("name", ""))
        if not name or slug(name) in names:
            raise ValueError(f"plan {path}: run {index + 1} needs a unique name, got {name!r}")
        names.add(slug(name))
        settings = _flat_merged(experiment, entry) if flat else _merged(experiment, entry)
        folder = Path(out) / path.stem / slug(name)
        try:
            if seeds is None:
                settings["out"] = str(folder)
                runs.append(PlannedRun(name, ExperimentConfig.from_dict(settings)))
                continue
            for seed in seeds:
                config = ExperimentConfig.from_dict(
                    {**settings, "seed": seed, "out": str(folder / f"seed-{seed}")}
                )
                runs.append(PlannedRun(name, config, seed))
        except ValueError as exc:
            raise ValueError(f"plan {path}, run {name!r}: {exc}") from None
    # seed by seed: a plan stopped part way has every run at the seeds it finished
    runs.sort(key=lambda run: -1 if run.seed is None else run.seed)
    return Plan(path.stem, base, tuple(runs), tuple(seeds or ()), str(values.get("reference", "")))


def _merged(base: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A run's settings: its sections' keys over the plan's; a codec table replaces the plan's whole."""
    merged = dict(base)
    for key, value in entry.items():
        if key in SECTIONS and isinstance(value, dict) and isinstance(base.get(key), dict):
            value = {**base[key], **value}
        merged[key] = value
    return merged


def _flat_merged(base: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A run of a flat (fedzip 0.1) plan: without error feedback unless the run asks for it."""
    base = {**base, "error_feedback": False}
    if "codec" in base:
        base["codec"] = str(base["codec"]).partition("+")[0]
    return {**base, **entry}


def _cached(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The summary of a finished run with exactly this configuration, if there is one."""
    path = Path(cfg.out) / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    stored = summary.get("config")
    if not isinstance(stored, dict):
        return None
    # Options added to fedzip after the run count as equal when they hold their defaults;
    # a run of an earlier version stored a flat config, which migrates.
    try:
        same = ExperimentConfig.from_dict(stored) == cfg
    except ValueError:
        return None
    # summary.json is rewritten after every round: a run stopped part way is not finished
    complete = summary.get("rounds") == cfg.server.rounds
    return summary if same and complete else None


def run_plan(
    plan: Plan,
    only: set[str] | None = None,
    force: bool = False,
    show_progress: bool = True,
    seeds: set[int] | None = None,
) -> list[tuple[PlannedRun, dict[str, Any]]]:
    """Run (or reuse) every run of ``plan``; returns (run, summary) for each finished one.

    A run whose ``summary.json`` matches its configuration is not run again
    unless ``force``, so an interrupted plan resumes where it stopped, run by
    run and seed by seed; ``only`` restricts which runs may execute (the
    others are still read from disk when they exist), and ``seeds`` which
    seeds. Progress shows the
    estimated time left, from the seconds per round of the runs done so far.
    """
    from rich.console import Console

    from .runner import run_experiment

    console = Console(stderr=True)
    finished: list[tuple[PlannedRun, dict[str, Any]]] = []
    pending = []
    for run in plan.runs:
        cached = _cached(run.config)
        selected = (only is None or run.name in only) and (seeds is None or run.seed in seeds)
        if cached is not None and not (force and selected):
            finished.append((run, cached))
        elif selected:
            pending.append(run)
    timed = [(s["wall_seconds"], s["rounds"]) for _, s in finished if s.get("rounds")]
    console.print(
        f"{plan.name}: {len(finished)} of {len(plan.runs)} runs done earlier, {len(pending)} to run"
    )
    for index, run in enumerate(pending, 1):
        left = sum(r.config.server.rounds for r in pending[index - 1 :])
        eta = ""
        if timed:
            per_round = sum(t for t, _ in timed) / sum(n for _, n in timed)
            eta = f", about {_duration(per_round * left)} left for this plan"
        console.print(f"[{index}/{len(pending)}] {plan.name}/{run.label}: running {run.config.label}{eta}")
        summary = run_experiment(run.config, show_progress)
        finished.append((run, summary))
        timed.append((summary["wall_seconds"], summary["rounds"]))
    order = {id(run): i for i, run in enumerate(plan.runs)}
    return sorted(finished, key=lambda item: order[id(item[0])])


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"
