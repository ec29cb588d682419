"""Rendering: the Markdown of the results document, from analysis and targets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedzip.fl.config import ExperimentConfig
from fedzip.fl.plan import Plan

from . import figures
from .analysis import (
    PLATEAU_FRACTION,
    Point,
    paired,
    plateau,
    points,
    reach,
    settings,
    trained_like,
    training_difference,
)
from .runs import RunSeeds, fedavg_runs
from .targets import (
    CONFIRMED_SEEDS,
    CURVE_FAMILIES,
    CURVE_POINTS,
    CURVE_RANGE,
    PLATEAU_POINTS,
    TARGET_POINTS,
    TargetRow,
    confirmed,
    curve,
    horizon_held,
    reach_target,
    target_rows,
)


def mean_std(values: np.ndarray, scale: float = 1.0, digits: int = 2) -> str:
    values = values[np.isfinite(values)] * scale
    if values.size == 0:
        return "–"
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def options(cfg, base=None) -> str:
    """A run's codec and options; with ``base`` (the plan's), how its clients train otherwise."""
    up = cfg.compressor().get_config()
    parts = [cfg.label]
    budget = up.get("budget_ratio") or up.get("budget_bytes")
    split = (
        f" ({up['budget_split']} split, k={up['clusters']})" if up.get("budget_split") == "uniform" else ""
    )
    if up.get("budget_ratio"):
        parts.append(f"budget 1/{up['budget_ratio']:g} of float32{split}")
    elif up.get("budget_bytes"):
        parts.append(f"budget {up['budget_bytes']:,} B{split}")
    elif up.get("rank"):
        iterations = f", {up['iterations']} iterations" if up["iterations"] != 2 else ""
        parts.append(f"rank-{up['rank']} factors, k={up['clusters']}{iterations}")
    elif "keep" in up:
        parts.append(f"keep {up['keep']:g}")
    if up["id"] == "fedzip" and not (budget or up.get("rank")):
        parts.append(f"k={up['clusters']}")
    if up["id"] == "qsgd":
        parts.append(f"{up['levels']} levels")
    if up.get("known_layout"):
        parts.append("keyed (no names or shapes)")
    if cfg.warmup.rounds:
        parts.append(f"warm-up {cfg.warmup.rounds} rounds from {cfg.warmup.start:g}")
    feedback = cfg.error_feedback
    if feedback.momentum:
        parts.append(
            f"momentum correction {feedback.momentum:g}" + ("" if feedback.masking else " (no masking)")
        )
    if feedback.clip_norm:
        parts.append(f"clip {feedback.clip_norm:g}")
    if feedback.age_decay != 1:
        parts.append(f"residual decay {feedback.age_decay:g} a round waited")
    if feedback.max_age:
        parts.append(f"residual dropped after {feedback.max_age} rounds")
    if feedback.step_ahead:
        parts.append(f"step-ahead {feedback.step_ahead:g} of the residual")
    if cfg.server.optimizer != "fedavg":
        parts.append(cfg.server.optimizer + (f" lr {cfg.server.lr:g}" if cfg.server.lr else ""))
    down = cfg.download_compressor()
    down = None if down is None else down.get_config()
    if down is not None and down.get("budget_ratio"):
        parts.append(f"down {cfg.downlink} budget 1/{down['budget_ratio']:g}")
    elif down is not None and down.get("rank"):
        # the download's levels and iterations where they are not the upload's and the default
        parts.append(
            f"down {cfg.downlink} rank-{down['rank']} factors"
            + (f", k={down['clusters']}" if down["clusters"] != up.get("clusters") else "")
            + (f", {down['iterations']} iterations" if down["iterations"] != 2 else "")
        )
    elif down is not None:
        parts.append(f"down {cfg.downlink} keep {down['keep']:g}")
    if cfg.server.shared_start:
        parts.append("shared start")
    trained = training_difference(cfg, base) if base is not None else ""
    return ", ".join(parts + ([trained] if trained else []))


def delta_text(point: Point, main: RunSeeds | None) -> str:
    """A point's paired test Δ as mean ± std in points; against ``main`` too when trained otherwise."""
    if point.reference is None:
        return "– (no FedAvg run trains alike)"
    text = mean_std(point.delta, 100)
    other = point.against(main)
    if other is not None:
        trained = training_difference(point.reference.config, main.config)
        return f"{text} (vs FedAvg, {trained}; {mean_std(other, 100)} vs the plan's FedAvg)"
    return text


def participation(cfg: ExperimentConfig) -> str:
    """Who trains a round, in words: "all every round" or "10 sampled a round, 10%"."""
    server = cfg.server
    if server.fraction >= 1:
        return "all every round"
    return f"{max(1, round(server.clients * server.fraction))} sampled a round, {server.fraction:.0%}"


MODEL_NAMES = {
    "cnn": "Paper CNN",
    "mlp": "MLP",
    "resnet": "Residual CNN with BatchNorm",
    "vit": "Small vision transformer",
}


def plan_rows(
    plan: Plan, grouped: dict[str, RunSeeds], referenced: dict[str, RunSeeds] | None = None
) -> list[str]:
    """The Markdown section of one plan; ``referenced``: the runs of the plan it names as reference.

    Each run's Δ is paired with the FedAvg run that trains its clients alike (same optimiser,
    learning rate and schedule, ...), "–" when there is none; the plan's reference is the FedAvg
    run trained as the plan's base.
    """
    base = plan.base
    data, local = base.data, base.training
    fedavgs = fedavg_runs(grouped, referenced or {})  # the plan's own first
    reference = trained_like(fedavgs, base)
    own = any(reference is g for g in grouped.values())
    wall = sum(s["wall_seconds"] for g in grouped.values() for s in g.summaries)
    seeds = sorted({run.seed for g in grouped.values() for run in g.runs})
    count = sum(len(g.summaries) for g in grouped.values())
    lines = [
        f"## Plan `{plan.name}`: {base.data.partition} partition",
        "",
        f"{MODEL_NAMES.get(base.model, base.model)}, {base.server.clients} clients ({participation(base)}), "
        f"batch {local.batch_size}, "
        f"{local.optimizer.upper()} lr {local.lr:g}, {local.local_epochs} local epoch(s); "
        f"**{f'{data.train_limit:,}' if data.train_limit else 'all'} training images** held by the clients, {data.validation:,} validation "
        f"images held out of training, the full test split (10,000 images). {base.server.rounds} rounds, seeds "
        f"{', '.join(map(str, seeds))}; {count} run{'s' if count != 1 else ''}, "
        f"{wall / 60:.0f} minutes of wall time."
        + (
            f" Test and validation accuracy are each run's mean over its last {base.server.test_last} rounds "
            "(a sampled round moves the model by up to a point or two)."
            if base.server.test_last > 1
            else ""
        ),
        "",
    ]
    target = None
    if reference is not None:
        gain, start, last = plateau(reference)
        held = horizon_held(gain)
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
    both = any(g.config.download is not None for g in grouped.values())
    lines += [
        "| run | codec | test accuracy | Δ vs FedAvg (pts) | validation accuracy | uplink payload MB | "
        "compression | participation | rounds to target | payload MB to target |"
        + (" up + down compression |" if both else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if both else ""),
    ]
    for name, g in grouped.items():
        test = g.final("accuracy")
        # paired by seed: same partition and initialisation
        alike = trained_like(fedavgs, g.config)
        delta = mean_std(paired(g, alike), 100) if alike is not None else "–"
        reached = [reach(m, target) for m in g.metrics] if target is not None else []
        hit = [r for r in reached if r is not None]
        rounds_to = (
            f"{np.mean([r[0] for r in hit]):.1f} ({len(hit)}/{len(reached)})"
            if hit
            else f"– (0/{len(reached)})"
        )
        mb_to = mean_std(np.array([r[1] for r in hit], dtype=float), 1e-6, 3) if hit else "–"
        per_round, gap = g.participation()
        taking = f"{per_round:.0f} of {g.config.server.clients}, every {gap:.1f}"
        lines.append(
            f"| {name} | {options(g.config, base)} | {mean_std(test, 100)} | {delta} | "
            f"{mean_std(g.final('val_accuracy'), 100)} | {mean_std(g.payload_bytes(), 1e-6, 3)} | "
            f"{mean_std(g.rate(), 1, 1)}x | {taking} | {rounds_to} | {mb_to} |"
            + (f" {mean_std(g.both_ways_rate(), 1, 1)}x |" if both else "")
        )
    lines += [
        "",
        "Accuracies in percent, mean ± standard deviation over seeds; Δ is paired by seed (same partition and "
        "initialisation) with the FedAvg run whose clients train alike (a run at another learning rate or "
        "schedule against FedAvg trained the same way; – where there is none). *Compression*: float32 size "
        "of every accepted update / payload bytes actually sent, "
        "next to the *participation*: clients trained a round of all clients, and every how many rounds a "
        "client trains (mean rounds between its turns); "
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


def _reached(spent: float, hit: int, seeds: int) -> str:
    """Payload MB to reach the target (mean over the seeds that do), and how many do."""
    return f"{spent / 1e6:.3f} ({hit}/{seeds})" if hit else f"– (0/{seeds})"


def _rising(group: RunSeeds) -> str:
    return f"{plateau(group)[0]:+.2f}"


def _verdict(row: TargetRow) -> str:
    return ("yes" if row.met else "no") + ("" if row.claims else " (fewer than 3 seeds: no claim)")


def _span(low: float, high: float) -> str:
    return f"{low:.0f}x" if f"{low:.0f}" == f"{high:.0f}" else f"{low:.0f}x – {high:.0f}x"


def _target_label(row: TargetRow) -> str:
    kind = " up + down" if row.both_ways else " with no client state" if row.stateless else ""
    return f"≥{row.ratio:g}x{kind} within 1 pt"


def target_lines(root: str, all_points: Sequence[Point], reference: RunSeeds | None) -> list[str]:
    """The targets table of one setting."""
    if reference is None:
        return []
    target = reach_target(reference)
    lines = [
        f"Targets on `{root}` (FedAvg test {100 * np.mean(reference.final('accuracy')):.2f}, "
        f"{len(reference.runs)} seed{'s' if len(reference.runs) != 1 else ''}; *to reach* = FedAvg's final validation accuracy − {TARGET_POINTS:g} "
        f"point = {target:.4f}). Every pick below is made on validation accuracy, among the runs measured "
        f"on {CONFIRMED_SEEDS} seeds when there are any (screening runs have one seed; a screening pick is then re-run "
        "on two more).",
        "",
        "| target | picked on validation | seeds | compression | test Δ vs FedAvg (pts) | payload MB to reach "
        "| still rising (val pts) | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in target_rows(all_points, reference):
        best = row.pick
        if best is None:
            lines.append(
                f"| {_target_label(row)} | no FedZip run at ≥{row.ratio:g}x{' both ways' if row.both_ways else ''}"
                f"{' without client state' if row.stateless else ''} yet | – | – | – | – | – | – |"
            )
            continue
        reached = _reached(row.spent, row.reached, best.seeds)
        delta = delta_text(best, reference)
        if row.kind == "ratio":
            rate = f"{best.both:.0f}x both ways" if row.both_ways else f"{best.rate:.0f}x"
            lines.append(
                f"| {_target_label(row)} | {best.plan}/{best.name} | {best.seeds} | {rate} | {delta} | "
                f"{reached} | {_rising(best.group)} | {_verdict(row)} |"
            )
        elif row.kind == "knob":
            lines.append(
                f"| `FedZip(budget_ratio={row.ratio:g})` alone within 1 pt | {best.plan}/{best.name} | {best.seeds} | "
                f"{best.rate:.0f}x | {delta} | {reached} | {_rising(best.group)} | {_verdict(row)} |"
            )
        elif row.kind == "stc":
            lines.append(
                f"| STC at its best p | {best.plan}/{best.name} (keep {best.group.config.compressor().keep:g}) | "
                f"{best.seeds} | {best.rate:.0f}x | {delta} | {reached} | {_rising(best.group)} | – |"
            )
        else:
            lines.append(
                f"| fewer bytes than STC to reach | {best.plan}/{best.name} | {best.seeds} | {best.rate:.0f}x | "
                f"{delta} | {reached} | {_rising(best.group)} | {_verdict(row)} |"
            )
    lines += [
        "",
        f"*Still rising*: the pick's mean validation gain over the last {PLATEAU_FRACTION:.0%} of the rounds "
        f"(3-round means at both ends), FedAvg's: {_rising(reference)}. A pick still gaining where FedAvg "
        "has levelled off is short of rounds, not of where it converges.",
        "",
    ]
    return lines


def curve_lines(all_points: Sequence[Point], reference: RunSeeds | None) -> list[str]:
    """What the figure holds per family: how many runs, over which compressions, how far each goes
    within a point of FedAvg on validation; and whether it is the curve asked for."""
    found = curve(all_points, reference)
    if found is None:
        return []
    lines = [
        "| family | runs | compression | on 3 seeds | furthest within 1 pt on validation | its test Δ (pts) |",
        "|---|---|---|---|---|---|",
    ]
    for row in found.families:
        members = row.members
        furthest = "– | –"
        if row.furthest is not None:
            best = row.furthest
            furthest = f"{best.plan}/{best.name} ({best.rate:.0f}x) | {delta_text(best, reference)}"
        lines.append(
            f"| {row.family} | {len(members)} | {_span(members[0].rate, members[-1].rate)} | "
            f"{sum(confirmed(p) for p in members)} | {furthest} |"
        )
    lines += [
        "",
        f"The curve asked for (≥{CURVE_POINTS} FedZip points from {CURVE_RANGE[0]:g}x to {CURVE_RANGE[1]:g}x, and "
        f"{', '.join(CURVE_FAMILIES[1:])}): FedZip has {found.fedzip_in_range} runs in that range"
        + (f"; no run yet of {', '.join(found.missing)}" if found.missing else "")
        + f": **{'complete' if found.complete else 'not complete'}**. *Furthest within 1 pt*: the most compressed run whose "
        "validation accuracy is within a point of FedAvg's (chosen on validation, test only reported).",
        "",
    ]
    return lines


def frontier_lines(grouped_plans: Sequence[tuple[Plan, dict[str, RunSeeds]]], assets: Path) -> list[str]:
    """Per setting with at least three compressed runs: the figure and the targets."""
    lines: list[str] = []
    for root, pooled in settings(grouped_plans).items():
        all_points = points(pooled)
        reference = next(
            (r for plan, g in pooled if (r := trained_like(fedavg_runs(g), plan.base)) is not None), None
        )
        if len(all_points) < 3 or not figures.plot_frontier(
            root, all_points, reference, assets / f"{root}-frontier.png"
        ):
            continue
        lines += [
            f"## Compression against accuracy: `{root}` and the plans that share its data",
            "",
            f"Plans: {', '.join(f'`{plan.name}`' for plan, _ in pooled)}. Each point is one run (mean over its "
            "seeds); FedZip's line joins the runs that no other FedZip run beats on both compression and "
            "validation accuracy, its other runs are the faint dots. Compression counts every payload, warm-up "
            "rounds included. Runs that compress downloads too are left off the figure and the uplink targets "
            "(their accuracy depends on the downloads); the both-ways row is theirs. Lines join runs measured "
            "on 3 seeds; hollow markers are runs with fewer (screening).",
            "",
            f"![accuracy against compression](results/{root}-frontier.png)",
            "",
            *curve_lines(all_points, reference),
            *target_lines(root, all_points, reference),
        ]
    return lines
