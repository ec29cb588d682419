"""docs/results.md from seeded plans run to convergence: means over seeds, validation-based choices.

Protocol (stated in the document it writes):
- every plan holds out a seeded validation set from the training split; the
  test split is only reported (every ``test_every`` rounds and after the last);
- rounds and bytes to a target are read on the validation curve, the target
  being FedAvg's final validation accuracy (mean over seeds) minus one point;
- the horizon is checked: FedAvg's mean validation accuracy must gain less
  than ``PLATEAU_POINTS`` over the last ``PLATEAU_FRACTION`` of the rounds;
- headline figures are means and standard deviations over the plan's seeds.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .reproduce import Plan, PlannedRun

PLATEAU_FRACTION = 0.2
PLATEAU_POINTS = 0.3
TARGET_POINTS = 1.0
REFERENCE_CODEC = "none"


@dataclass
class RunSeeds:
    """One run of a plan over its seeds."""

    name: str
    runs: list[PlannedRun] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[list[dict[str, float]]] = field(default_factory=list)

    @property
    def config(self):
        return self.runs[0].config

    def final(self, key: str) -> np.ndarray:
        return np.array([m[-1][key] for m in self.metrics])

    def payload_bytes(self) -> np.ndarray:
        return np.array([s["payload_bytes"] for s in self.summaries], dtype=float)

    def rate(self) -> np.ndarray:
        """Whole-run compression: float32 size of every accepted update / payload bytes sent."""
        return np.array([s["payload_compression_rate"] or math.nan for s in self.summaries], dtype=float)

    def downloads(self) -> np.ndarray:
        """Per seed, how many train messages (model downloads) the run sent."""
        return np.array([sum(row["clients"] for row in m[1:]) for m in self.metrics], dtype=float)

    def both_ways_rate(self) -> np.ndarray:
        """Float32 uploads and downloads of the run / payload bytes sent up + bytes sent down.

        Downloads travel as float32 weights unless the run compresses them (``downlink``).
        """
        rates = []
        for summary, downloads in zip(self.summaries, self.downloads(), strict=True):
            model = summary["model_bytes"]
            payload = summary["payload_bytes"]
            uploads = (summary["payload_compression_rate"] or 0.0) * payload
            down = summary.get("downlink_bytes", 0) if self.config.downlink else downloads * model
            rates.append((uploads + downloads * model) / (payload + down) if payload + down else math.nan)
        return np.array(rates, dtype=float)

    def curve(self, key: str) -> np.ndarray:
        """Mean over seeds, per round (seeds cut to the shortest run)."""
        length = min(len(m) for m in self.metrics)
        return np.nanmean([[row[key] for row in m[:length]] for m in self.metrics], axis=0)


def group(results: Sequence[tuple[PlannedRun, dict[str, Any]]]) -> dict[str, RunSeeds]:
    from .report import read_metrics

    grouped: dict[str, RunSeeds] = {}
    for run, summary in results:
        entry = grouped.setdefault(run.name, RunSeeds(run.name))
        entry.runs.append(run)
        entry.summaries.append(summary)
        entry.metrics.append(read_metrics(Path(run.config.out)))
    return grouped


def reach(metrics: list[dict[str, float]], target: float) -> tuple[int, float] | None:
    """(first round, cumulative payload bytes) at which validation accuracy reaches ``target``."""
    from .report import reach as reach_on

    return reach_on(metrics, target, accuracy="val_accuracy", sent="payload_bytes", per_round=True)


def reach_target(reference: RunSeeds) -> float:
    """The *to reach* target: FedAvg's mean final validation accuracy minus TARGET_POINTS."""
    return float(np.mean(reference.final("val_accuracy"))) - TARGET_POINTS / 100


def plateau(reference: RunSeeds) -> tuple[float, int, int]:
    """FedAvg's mean validation gain (points) over the last PLATEAU_FRACTION of rounds, and those rounds."""
    curve = reference.curve("val_accuracy")
    last = len(curve) - 1
    start = max(1, round(last * (1 - PLATEAU_FRACTION)))
    # three-round means at both ends, so one noisy round does not decide
    end_mean = float(np.mean(curve[max(start, last - 2) : last + 1]))
    start_mean = float(np.mean(curve[start : start + 3]))
    return 100 * (end_mean - start_mean), start, last


def paired(group: RunSeeds, reference: RunSeeds, key: str = "accuracy") -> np.ndarray:
    """Final ``key`` minus the reference's, seed by seed, over the seeds both have."""
    mine = {run.seed: m[-1][key] for run, m in zip(group.runs, group.metrics, strict=True)}
    theirs = {run.seed: m[-1][key] for run, m in zip(reference.runs, reference.metrics, strict=True)}
    return np.array([mine[s] - theirs[s] for s in sorted(mine.keys() & theirs.keys(), key=str)], dtype=float)


def _mean_std(values: np.ndarray, scale: float = 1.0, digits: int = 2) -> str:
    values = values[np.isfinite(values)] * scale
    if values.size == 0:
        return "–"
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def training_difference(cfg: Any, base: Any) -> str:
    """How ``cfg`` trains its clients otherwise than ``base`` (optimiser, lr and its schedule, local
    epochs, batch, local momentum), e.g. "lr 0.1"; "" when alike: a run is compared with FedAvg trained alike."""
    parts = []
    if cfg.optimizer != base.optimizer:
        parts.append(cfg.optimizer)
    if cfg.lr_schedule != base.lr_schedule or cfg.lr_final != base.lr_final:
        parts.append(
            f"{cfg.lr_schedule} lr {cfg.lr:g}"
            + (f" to {cfg.lr_final:g}" if cfg.lr_schedule != "constant" else "")
        )
    elif cfg.lr != base.lr:
        parts.append(f"lr {cfg.lr:g}")
    if cfg.local_epochs != base.local_epochs:
        parts.append(f"{cfg.local_epochs} local epochs")
    if cfg.batch_size != base.batch_size:
        parts.append(f"batch {cfg.batch_size}")
    if cfg.local_momentum != base.local_momentum:
        parts.append(f"local momentum {cfg.local_momentum:g}")
    return ", ".join(parts)


def _options(cfg, base=None) -> str:
    """A run's codec and options; with ``base`` (the plan's), how its clients train otherwise."""
    parts = [cfg.label]
    split = f" ({cfg.budget_split} split, k={cfg.clusters})" if cfg.budget_split == "uniform" else ""
    if cfg.budget_ratio:
        parts.append(f"budget 1/{cfg.budget_ratio:g} of float32{split}")
    elif cfg.budget_bytes:
        parts.append(f"budget {cfg.budget_bytes:,} B{split}")
    elif cfg.codec == "lowrank" or cfg.rank:
        iterations = f", {cfg.iterations} iterations" if cfg.iterations else ""
        parts.append(f"rank-{cfg.rank or 1} factors, k={cfg.clusters}{iterations}")
    elif cfg.codec in ("topk", "stc") or cfg.codec.startswith("fedzip"):
        parts.append(f"keep {cfg.keep:g}")
    if cfg.codec.startswith("fedzip") and not (cfg.budget_ratio or cfg.budget_bytes or cfg.rank):
        parts.append(f"k={cfg.clusters}")
    if cfg.codec == "qsgd":
        parts.append(f"{cfg.levels} levels")
    if cfg.warmup_rounds:
        parts.append(f"warm-up {cfg.warmup_rounds} rounds from {cfg.warmup_start:g}")
    if cfg.ef_momentum:
        parts.append(f"momentum correction {cfg.ef_momentum:g}" + ("" if cfg.masking else " (no masking)"))
    if cfg.clip_norm:
        parts.append(f"clip {cfg.clip_norm:g}")
    if cfg.server_optimizer != "fedavg":
        parts.append(cfg.server_optimizer + (f" lr {cfg.server_lr:g}" if cfg.server_lr else ""))
    if cfg.downlink_budget_ratio:
        parts.append(f"down {cfg.downlink} budget 1/{cfg.downlink_budget_ratio:g}")
    elif cfg.downlink_rank:
        parts.append(
            f"down {cfg.downlink} rank-{cfg.downlink_rank} factors"
            + (f", k={cfg.downlink_clusters}" if cfg.downlink_clusters else "")
            + (f", {cfg.downlink_iterations} iterations" if cfg.downlink_iterations else "")
        )
    elif cfg.downlink:
        parts.append(f"down {cfg.downlink} keep {cfg.downlink_keep or cfg.keep:g}")
    if cfg.downlink_shared_start:
        parts.append("shared start")
    trained = training_difference(cfg, base) if base is not None else ""
    return ", ".join(parts + ([trained] if trained else []))


def trained_like(fedavgs: Sequence[RunSeeds], like: Any) -> RunSeeds | None:
    """The first of ``fedavgs`` whose clients train as the config ``like`` does (no training_difference)."""
    return next((f for f in fedavgs if not training_difference(f.config, like)), None)


def fedavg_runs(*grouped: dict[str, RunSeeds]) -> list[RunSeeds]:
    """Every FedAvg run of these plans, in order."""
    return [g for plan in grouped for g in plan.values() if g.config.codec == REFERENCE_CODEC]


def plan_rows(
    plan: Plan, grouped: dict[str, RunSeeds], referenced: dict[str, RunSeeds] | None = None
) -> list[str]:
    """The Markdown section of one plan; ``referenced``: the runs of the plan it names as reference.

    Each run's Δ is paired with the FedAvg run that trains its clients alike (same optimiser,
    learning rate and schedule, ...), "–" when there is none; the plan's reference is the FedAvg
    run trained as the plan's base.
    """
    base = plan.base
    fedavgs = fedavg_runs(grouped, referenced or {})  # the plan's own first
    reference = trained_like(fedavgs, base)
    own = any(reference is g for g in grouped.values())
    wall = sum(s["wall_seconds"] for g in grouped.values() for s in g.summaries)
    seeds = sorted({run.seed for g in grouped.values() for run in g.runs})
    lines = [
        f"## Plan `{plan.name}`: {base.partition} partition",
        "",
        f"Paper CNN, {base.clients} clients (all every round), batch {base.batch_size}, "
        f"{base.optimizer.upper()} lr {base.lr:g}, {base.local_epochs} local epoch(s); "
        f"**{f'{base.train_limit:,}' if base.train_limit else 'all'} training images** held by the clients, {base.validation:,} validation "
        f"images held out of training, the full test split (10,000 images). {base.rounds} rounds, seeds "
        f"{', '.join(map(str, seeds))}; {sum(len(g.summaries) for g in grouped.values())} runs, "
        f"{wall / 60:.0f} minutes of wall time.",
        "",
    ]
    target = None
    if reference is not None:
        gain, start, last = plateau(reference)
        held = gain < PLATEAU_POINTS
        target = reach_target(reference)
        if not own:
            lines += [
                f"FedAvg reference: the `fedavg` run of plan `{plan.reference}` (same data and seeds).",
                "",
            ]
        lines += [
            f"Horizon: FedAvg's mean validation accuracy gained **{gain:+.2f} points** from round {start} to "
            f"round {last} (the last {PLATEAU_FRACTION:.0%} of the rounds; 3-round means at both ends): the "
            f"plateau rule (< {PLATEAU_POINTS} points) {'**held**' if held else '**did not hold**: FedAvg was still improving'}. "
            f"Target for the *to reach* columns: FedAvg's final validation accuracy minus {TARGET_POINTS:g} "
            f"point = {target:.4f}.",
            "",
        ]
    both = any(g.config.downlink for g in grouped.values())
    lines += [
        "| run | codec | test accuracy | Δ vs FedAvg (pts) | validation accuracy | uplink payload MB | "
        "compression | rounds to target | payload MB to target |"
        + (" up + down compression |" if both else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if both else ""),
    ]
    for name, g in grouped.items():
        test = g.final("accuracy")
        # paired by seed: same partition and initialisation
        alike = trained_like(fedavgs, g.config)
        delta = _mean_std(paired(g, alike), 100) if alike is not None else "–"
        reached = [reach(m, target) for m in g.metrics] if target is not None else []
        hit = [r for r in reached if r is not None]
        rounds_to = (
            f"{np.mean([r[0] for r in hit]):.1f} ({len(hit)}/{len(reached)})"
            if hit
            else f"– (0/{len(reached)})"
        )
        mb_to = _mean_std(np.array([r[1] for r in hit], dtype=float), 1e-6, 3) if hit else "–"
        lines.append(
            f"| {name} | {_options(g.config, base)} | {_mean_std(test, 100)} | {delta} | "
            f"{_mean_std(g.final('val_accuracy'), 100)} | {_mean_std(g.payload_bytes(), 1e-6, 3)} | "
            f"{_mean_std(g.rate(), 1, 1)}x | {rounds_to} | {mb_to} |"
            + (f" {_mean_std(g.both_ways_rate(), 1, 1)}x |" if both else "")
        )
    lines += [
        "",
        "Accuracies in percent, mean ± standard deviation over seeds; Δ is paired by seed (same partition and "
        "initialisation) with the FedAvg run whose clients train alike (a run at another learning rate or "
        "schedule against FedAvg trained the same way; – where there is none). *Compression*: float32 size "
        "of every accepted update / payload bytes actually sent, "
        "over the whole run. *To reach*: first round whose validation accuracy reaches the target, mean over "
        "the seeds that reach it (how many in brackets), and the payload bytes sent until then."
        + (
            " *Up + down*: float32 uploads and downloads / bytes sent both ways (downloads as Flower carried "
            "them; float32 where the run does not compress them)."
            if both
            else ""
        ),
        "",
        f"![validation accuracy per round](results/{plan.name}-rounds.png)",
        f"![validation accuracy against uplink bytes](results/{plan.name}-uplink.png)",
        "",
    ]
    return lines


def plot_plan(plan: Plan, grouped: dict[str, RunSeeds], assets: Path) -> None:
    from .report import _plot_runs

    by_round, by_bytes = {}, {}
    for name, g in grouped.items():
        rounds = g.curve("round")
        accuracy = g.curve("val_accuracy")
        sent = np.cumsum(g.curve("payload_bytes")) / 1e6
        by_round[name] = list(zip(rounds.tolist(), accuracy.tolist(), strict=True))
        by_bytes[name] = list(zip(sent[1:].tolist(), accuracy[1:].tolist(), strict=True))
    _plot_runs(
        by_round,
        assets / f"{plan.name}-rounds.png",
        "round",
        f"{plan.name}: mean over seeds",
        ylabel="validation accuracy",
    )
    _plot_runs(
        by_bytes,
        assets / f"{plan.name}-uplink.png",
        "cumulative uplink payload (MB)",
        f"{plan.name}: accuracy vs bytes sent",
        log_x=True,
        ylabel="validation accuracy",
    )


def energy_lines(plans: Sequence[tuple[Plan, dict[str, RunSeeds]]], link_name: str = "lte") -> list[str]:
    """Client radio energy per round under the full model (promotion and tail), from the runs' bytes."""
    from ..energy import get_link, saved_percent
    from .frontier import settings
    from .models import build, parameter_count

    if not plans:
        return []
    link = get_link(link_name)
    model_bytes = 4 * parameter_count(build("cnn"))
    plan, grouped = plans[0]
    reference = trained_like(fedavg_runs(grouped), plan.base)
    if reference is None:
        return []
    train = float(
        np.nanmean([np.nanmean([r["client_train_seconds"] for r in m[1:]]) for m in reference.metrics])
    )

    def per_reply(g: RunSeeds) -> float:
        return float(
            np.mean([s["uplink_bytes"] / max(1, s["rounds"] * g.config.clients) for s in g.summaries])
        )

    def per_download(g: RunSeeds) -> float:
        """Bytes of one download as Flower carried it."""
        sent = np.array([s.get("downlink_bytes", 0) for s in g.summaries], dtype=float)
        return float(np.mean(sent / np.maximum(1, g.downloads())))

    base_up = per_reply(reference)
    fedavg = link.round_joules(model_bytes, round(base_up), train)

    def row(name: str, up: float, down: float, measured: bool) -> str:
        one_way = link.round_joules(model_bytes, round(up), train)
        both = link.round_joules(round(down), round(up), train)
        return (
            f"| {name} | {up:,.0f} | {one_way.transfer:.2f} | {saved_percent(fedavg.transfer, one_way.transfer):.1f}% "
            f"| {one_way.total:.2f} | {saved_percent(fedavg.total, one_way.total):.1f}% "
            f"| {down:,.0f}{'' if measured else ' (assumed)'} | {both.total:.2f} "
            f"| {saved_percent(fedavg.total, both.total):.1f}% |"
        )

    lines = [
        "## Client radio energy per round, as the radio spends it",
        "",
        f"Plan `{plan.name}`, one client's round on {link.name.upper()} (`fedzip.energy`, Huang et al. 2012): "
        f"download the {model_bytes / 1e6:.1f} MB float32 model, train ({train:.1f} s, as measured here), upload "
        "the reply as Flower carried it. *Transfer only* is the linear model of the paper's claim; *with tail* "
        f"adds the radio's promotion ({link.promotion_s:.2f} s at {link.promotion_mw:.0f} mW) and its tail "
        f"({link.tail_s:.1f} s at {link.tail_mw:.0f} mW) after each burst; the download's tail runs through "
        "the training and the upload starts inside it. The last columns compress downloads too: for runs that "
        "did (`FedZipStrategy(downlink=...)`, from any plan on this data) the download is what Flower carried to "
        "the clients, measured; for the others it is *assumed* compressed as much as that run's uploads, an "
        "illustration of the lever, not a measured run.",
        "",
        "| run | upload bytes | J, transfer only | saved | J with tail | saved | download bytes, both ways "
        "compressed | J with tail | saved |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    # Every run of this plan; from the plans sharing its data, the runs that compressed downloads.
    for other, runs in settings(plans)[plan.reference or plan.name]:
        if other.base.model != plan.base.model:
            continue
        for name, g in runs.items():
            up = per_reply(g)
            if g.config.downlink:
                down, measured = per_download(g), True
            elif other is not plan:
                continue
            elif g is reference:  # FedAvg downloads the float32 model: nothing assumed
                down, measured = model_bytes, True
            else:
                down, measured = (model_bytes * up / base_up if base_up else model_bytes), False
            lines.append(row(name if other is plan else f"{other.name}/{name}", up, down, measured))
    tail_share = fedavg.tail / fedavg.total
    lines += [
        "",
        "What remains of the paper's \"99% of energy\": the upload's energy falls with its bytes (99%+ for "
        "every sparse codec), but a client's round also downloads the model and, above all, keeps the LTE radio "
        f"in its tail for {link.tail_s:.1f} s after each burst: {tail_share:.0%} of FedAvg's round here, and "
        "nearly all of a compressed one. Compressing downloads removes the download's transfer energy; what is "
        "left is promotion and tail, which no codec can shrink. The levers that move it are fewer rounds (each "
        "round pays one tail), uploading while the download's tail is still running (local training shorter "
        "than the tail), and links with short tails (Wi-Fi's is 0.24 s).",
        "",
    ]
    return lines


def machine_summary(plans: Sequence[tuple[Plan, dict[str, RunSeeds]]]) -> dict[str, Any]:
    """docs/results/summary.json: per plan, per run, per seed."""
    out: dict[str, Any] = {}
    for plan, grouped in plans:
        runs: dict[str, Any] = {}
        for name, g in grouped.items():
            seeds = {}
            for run, summary, metrics in zip(g.runs, g.summaries, g.metrics, strict=True):
                cfg = run.config
                seeds[str(run.seed)] = {
                    "codec": cfg.label,
                    "options": {
                        k: getattr(cfg, k) for k in ("keep", "clusters", "levels", "error_feedback", "lr")
                    },
                    "rounds": summary["rounds"],
                    "final_test_accuracy": metrics[-1]["accuracy"],
                    "final_validation_accuracy": metrics[-1]["val_accuracy"],
                    "uplink_payload_bytes": summary["payload_bytes"],
                    "uplink_bytes_as_carried": summary["uplink_bytes"],
                    "compression_ratio": summary["payload_compression_rate"],
                    "train_images": cfg.train_limit,
                    "validation_images": cfg.validation,
                    "wall_seconds": summary["wall_seconds"],
                }
            runs[name] = seeds
        out[plan.name] = runs
    return out


FINDINGS = "findings.md"  # next to results.md: the targets' analysis, kept by hand


def write_document(
    path: Path,
    plans: Sequence[tuple[Plan, Sequence[tuple[PlannedRun, dict[str, Any]]]]],
    rate_lines: Sequence[str] = (),
    speed_lines: Sequence[str] = (),
) -> Path:
    """docs/results.md, docs/results/summary.json and the figures, from finished runs."""
    from .frontier import frontier_lines

    path.parent.mkdir(parents=True, exist_ok=True)
    assets = path.parent / "results"
    assets.mkdir(exist_ok=True)
    grouped_plans = [(plan, group(results)) for plan, results in plans if results]
    by_name = {plan.name: grouped for plan, grouped in grouped_plans}
    sections: list[str] = []
    for plan, grouped in grouped_plans:
        sections += plan_rows(plan, grouped, by_name.get(plan.reference, {}) if plan.reference else None)
        plot_plan(plan, grouped, assets)
    (assets / "summary.json").write_text(json.dumps(machine_summary(grouped_plans), indent=1) + "\n")
    missing = [
        f"`{plan.name}`: {len(plan.runs) - len(results)} of {len(plan.runs)} runs still to run"
        for plan, results in plans
        if len(results) < len(plan.runs)
    ]
    lines = [
        "# Results: FedZip at convergence, over seeds, with real bytes",
        "",
        "Generated by `fedzip reproduce` from the seeded plans in `experiments/`; every byte count is `len()` "
        "of payloads that decoded on the server (headers, names, shapes, centroids and checksum included). "
        "Runs live in `docs/results/runs/<plan>/<run>/seed-<k>/` (metrics.csv per round, summary.json); "
        "`docs/results/summary.json` has every run and seed in one file. A finished run is reused when its "
        "configuration is unchanged, so a plan can be run in pieces.",
        "",
        "How choices are made: every plan holds out a seeded validation set from the training split. The "
        "horizon, the targets and any choice among settings are read on validation accuracy; the test split is "
        "evaluated every few rounds and after the last, and only reported. In the converge plans the one choice "
        "made from results is the horizon: 80 rounds, read off a pilot FedAvg run's validation curve and checked "
        "below by the plateau rule; the rest (lr 0.05, batch 10, the keeps, STC's p = 1/400) is fixed from the "
        "papers, not tuned. The extreme and curve plans share those settings; what is picked among their runs "
        "(STC's best p, FedZip's best configuration at a compression, its frontier) is picked on validation "
        "accuracy, and the targets' tables say which run each pick was.",
        "",
        f"Machine: {platform.machine()}, 2-core CPU, Python {platform.python_version()}; generated "
        f"{time.strftime('%Y-%m-%d')}. A simulated round of these plans against the same clients' training "
        "back to back: [benchmarks.md](benchmarks.md#a-federated-round-phase-by-phase-fedzip-bench---fl).",
        "",
    ]
    if (path.parent / FINDINGS).exists():
        lines += [
            f"What the targets below reached, what limits those not met (with the measurements that show it) "
            f"and what would be needed: [{FINDINGS}]({FINDINGS}), written by hand from these tables.",
            "",
        ]
    if missing:
        lines += ["**Not finished yet** (the tables show the runs that are): " + "; ".join(missing) + ".", ""]
    lines += [*sections, *frontier_lines(grouped_plans, assets), *energy_lines(grouped_plans)]
    lines += [*speed_lines, *rate_lines]
    path.write_text("\n".join(lines) + "\n")
    return path
