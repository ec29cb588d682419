"""docs/results-10-rounds.md: the paper's claims checked with real bytes, from one-seed plans."""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedzip.energy import get_link, saved_percent
from fedzip.fl.config import ExperimentConfig
from fedzip.fl.plan import Plan
from fedzip.fl.report import default_target, reach, read_metrics, write_report

from .rates import ENCODINGS, RateRow, rate_section
from .targets import PAPER_RATIO


def _mb(value: float) -> str:
    return f"{value / 1e6:.3f}"


def _pts(value: float) -> str:
    return f"{100 * value:+.2f}"


def _variants(name: str, s: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(label, codec, transcoded encoding) rows of one run; FedZip runs give one row per encoding."""
    if not s.get("encoding_payload_bytes"):
        return [(name, s["codec"], None)]
    return [
        (f"{name} ({encoding})", s["codec"].replace("fedzip-dap", f"fedzip-{encoding}"), encoding)
        for encoding in ENCODINGS
    ]


def _round_bytes(metrics: list[dict[str, float]], encoding: str | None) -> tuple[list[float], list[float]]:
    """(uplink, payload) bytes per round; with ``encoding``, the same messages carrying that encoding."""
    if encoding is None:
        return [r["uplink_bytes"] for r in metrics], [r["payload_bytes"] for r in metrics]
    payload = [r[f"{encoding}_bytes"] for r in metrics]
    return [
        r["uplink_bytes"] - r["payload_bytes"] + p for r, p in zip(metrics, payload, strict=True)
    ], payload


def _plan_section(
    plan: Plan, summaries: dict[str, dict[str, Any]], out: Path, assets: Path
) -> tuple[list[str], dict]:
    fedavg = next((s for s in summaries.values() if s["codec"] == "none"), None)
    target = default_target(list(summaries.values()))
    labelled = [{**s, "name": name} for name, s in summaries.items()]
    report_dir = out / plan.name / "report"
    write_report(report_dir, labelled, target)
    for figure in ("accuracy_vs_round.png", "accuracy_vs_uplink.png"):
        shutil.copyfile(report_dir / figure, assets / f"{plan.name}-{figure}")

    cfg = plan.base
    raw_per_reply = next(iter(summaries.values()))["model_bytes"]
    lines = [
        f"## {plan.name}: {cfg.data.partition} partition",
        "",
        f"`experiments/{plan.name}.toml`: model `{cfg.model}`, {cfg.server.clients} clients (fraction {cfg.server.fraction}), "
        f"{cfg.server.rounds} rounds, {cfg.training.local_epochs} local epoch, batch {cfg.training.batch_size}, "
        f"{cfg.training.optimizer} lr {cfg.training.lr}, {cfg.data.train_limit or 'all'} training images, "
        f"{cfg.data.test_limit or 'all 10,000'} test images, seed {cfg.seed}. "
        f"A float32 update is {raw_per_reply / 1e6:.3f} MB.",
        "",
        "| run | codec | keep | final acc. | vs FedAvg (pts) | uplink MB | payload rate | bandwidth saved "
        "| upload J/client/round | radio energy saved (up+down) | rounds to target | uplink MB to target | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    facts: dict[str, Any] = {
        "target": target,
        "fedavg": fedavg,
        "fedavg_accuracy": [r["accuracy"] for r in read_metrics(Path(fedavg["config"]["out"]))]
        if fedavg
        else [],
        "rows": [],
    }
    link = None
    for name, s in summaries.items():
        link = get_link(s["link"])
        rows_metrics = read_metrics(Path(s["config"]["out"]))
        accepted = sum(int(r["accepted"]) for r in rows_metrics if r["round"] > 0)
        for label, codec, encoding in _variants(name, s):
            uplink_per_round, payload_per_round = _round_bytes(rows_metrics, encoding)
            cumulative = np.cumsum(uplink_per_round).tolist()
            uplink, payload = cumulative[-1], sum(payload_per_round)
            history = [
                {"round": r["round"], "accuracy": r["accuracy"], "cumulative_uplink_bytes": c}
                for r, c in zip(rows_metrics, cumulative, strict=True)
            ]
            hit = reach(history, target) if target is not None else None
            upload_j = link.upload_joules(round(uplink / max(accepted, 1)))
            float32_j = link.upload_joules(round(s["raw_bytes"] / max(accepted, 1)))
            download_j = link.download_joules(s["model_bytes"])
            radio_saved = saved_percent(float32_j + download_j, upload_j + download_j)
            rate = accepted * s["model_bytes"] / payload if payload else float("nan")
            keep = getattr(ExperimentConfig.from_dict(s["config"]).compressor(), "keep", None)
            delta = s["final_accuracy"] - fedavg["final_accuracy"] if fedavg else float("nan")
            row = {
                "label": label,
                "codec": codec,
                "keep": keep,
                "final": s["final_accuracy"],
                "delta": delta,
                "uplink": uplink,
                "rate": rate,
                "hit": hit,
                "accuracy": [r["accuracy"] for r in rows_metrics],
                "cumulative": cumulative,
            }
            facts["rows"].append(row)
            lines.append(
                f"| {label} | {codec} | {keep if keep is not None else '-'} | {s['final_accuracy']:.4f} "
                f"| {_pts(delta)} | {_mb(uplink)} | {rate:.1f}x "
                f"| {saved_percent(s['raw_bytes'], uplink):.2f}% | {upload_j:.4f} | {radio_saved:.1f}% "
                f"| {hit[0] if hit else 'not reached'} | {_mb(hit[1]) if hit else '-'} "
                f"| {s['wall_seconds']:.0f} |"
            )
    lines += [
        "",
        f"Target for the last two columns: FedAvg's final accuracy minus one point = **{target:.4f}**."
        if target is not None
        else "",
        f"Energy: `{link.name}` link, {link.up_mbps} Mbps up / {link.down_mbps} Mbps down; a float32 update "
        f"costs {link.upload_joules(raw_per_reply):.3f} J to upload and the float32 model "
        f"{link.download_joules(raw_per_reply):.3f} J to download, per client per round."
        if link
        else "",
        "",
        *_bytes_to_accuracy(facts["rows"], target),
        f"![accuracy vs cumulative uplink, log scale](results/{plan.name}-accuracy_vs_uplink.png)",
        "",
        f"![accuracy per round](results/{plan.name}-accuracy_vs_round.png)",
        "",
    ]
    return lines, facts


def _bytes_to_accuracy(rows: list[dict[str, Any]], target: float | None) -> list[str]:
    """Uplink MB each run needed to first reach a ladder of accuracies (dap for FedZip runs)."""
    shown = [r for r in rows if not r["codec"].startswith("fedzip") or r["label"].endswith("(dap)")]
    levels = sorted({0.6, 0.7, 0.75, 0.8, 0.85, *([round(target, 4)] if target is not None else [])})
    lines = [
        "Uplink MB needed to first reach each test accuracy (FedZip runs: dap; `-`: not reached):",
        "",
        "| run | " + " | ".join(f"{level:.4g}" for level in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for r in shown:
        cells = []
        for level in levels:
            hit = _first(r, level)
            cells.append(_mb(hit) if hit is not None else "-")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _first(row: dict[str, Any], level: float) -> float | None:
    for accuracy, uplink in zip(row["accuracy"][1:], row["cumulative"][1:], strict=True):
        if accuracy >= level:
            return uplink
    return None


def _verdict(plan: Plan, facts: dict[str, Any]) -> list[str]:
    """Item 4: the most compressed FedZip run within one point of FedAvg, against 1085x and STC."""
    target = facts["target"]
    # dap is the smallest encoding of every FedZip run; the others have the same accuracy.
    fedzip = [r for r in facts["rows"] if r["codec"].startswith("fedzip") and r["label"].endswith("(dap)")]
    within = [r for r in fedzip if r["delta"] >= -0.01]
    lines = [f"### {plan.name}", ""]
    if not within:
        closest = max(fedzip, key=lambda r: r["delta"], default=None)
        lines.append(
            "No FedZip run ends within 1 point of FedAvg, so the 1085x-within-1-point target is **not "
            "reached**"
            + (
                f"; the closest is {closest['label']} ({_pts(closest['delta'])} pts, {closest['rate']:.0f}x)."
                if closest
                else "."
            )
        )
    else:
        best = max(within, key=lambda r: r["rate"])
        verdict = "reaches" if best["rate"] >= PAPER_RATIO else "does not reach"
        lines.append(
            f"Highest real compression within 1 point of FedAvg: **{best['label']}**, keep {best['keep']}, "
            f"{best['rate']:.0f}x ({_pts(best['delta'])} pts); this {verdict} the paper's {PAPER_RATIO:.0f}x."
        )
    beyond = [r for r in fedzip if not within or r["rate"] > max(w["rate"] for w in within)]
    if beyond:
        lines.append("More compressed FedZip runs and their accuracy gap to FedAvg:")
    reference = facts["fedavg_accuracy"]
    for r in sorted(beyond, key=lambda r: r["rate"]):
        trend = ""
        if reference and len(r["accuracy"]) == len(reference) > 2:
            middle = (len(reference) - 1) // 2
            gaps = [r["accuracy"][i] - reference[i] for i in (middle, len(reference) - 1)]
            trend = (
                f" (gap at round {middle}: {_pts(gaps[0])}, at round {len(reference) - 1}: {_pts(gaps[1])})"
            )
        lines.append(f"- {r['label']}: {r['rate']:.0f}x, {_pts(r['delta'])} pts against FedAvg{trend}.")
    stc = [r for r in facts["rows"] if r["codec"] == "stc"]
    reached = [r for r in fedzip if r["hit"]]
    if target is not None and stc:
        stc_row = stc[0]
        cheapest = min(reached, key=lambda r: r["hit"][1], default=None)
        stc_text = (
            f"STC needs {_mb(stc_row['hit'][1])} MB ({stc_row['hit'][0]} rounds)"
            if stc_row["hit"]
            else "STC does not reach it"
        )
        if cheapest:
            wins = not stc_row["hit"] or cheapest["hit"][1] < stc_row["hit"][1]
            lines.append(
                f"- To reach {target:.4f}: the cheapest FedZip run, {cheapest['label']}, needs "
                f"{_mb(cheapest['hit'][1])} MB of uplink ({cheapest['hit'][0]} rounds); {stc_text}: "
                f"FedZip {'meets' if wins else 'does not meet'} the fewer-bytes-than-STC target."
            )
        else:
            lines.append(f"- No FedZip run reaches {target:.4f} within the rounds run; {stc_text}.")
        # A level STC does reach, to compare the two where both get there.
        level = max(
            (
                lv
                for lv in (0.6, 0.65, 0.7, 0.72, 0.74, 0.75, 0.76, 0.78, 0.8, 0.82, 0.84)
                if _first(stc_row, lv) is not None
            ),
            default=None,
        )
        if level is not None:
            runs = [(r, _first(r, level)) for r in fedzip]
            runs = [(r, mb) for r, mb in runs if mb is not None]
            if runs:
                best_run, best_mb = min(runs, key=lambda item: item[1])
                lines.append(
                    f"- At {level} accuracy, the highest of 0.6-0.84 that STC reaches, STC needs "
                    f"{_mb(_first(stc_row, level))} MB; the cheapest FedZip run, {best_run['label']}, "
                    f"needs {_mb(best_mb)} MB."
                )
    lines.append("")
    return lines


def write_document(
    path: Path,
    plans: Sequence[tuple[Plan, dict[str, dict[str, Any]]]],
    rates: Sequence[RateRow],
    out: Path,
    rate_seconds: float,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assets = path.parent / "results"
    assets.mkdir(exist_ok=True)
    total = sum(s["wall_seconds"] for _, summaries in plans for s in summaries.values())
    lines = [
        "# Results: FedZip's claims, checked with real bytes",
        "",
        "Generated by `make reproduce` (`python -m research`) from the plans in `experiments/`; every size below is `len()` of a "
        "payload that decodes (headers, names, shapes, centroids and checksum included), except the column "
        "marked as the authors' estimate. Runs are resumable: a finished run is reused when its configuration is "
        "unchanged, and `python -m research PLAN --only NAME --force` re-runs one.",
        "",
        f"Machine: {platform.machine()}, {_cpus()} CPU cores, Python {platform.python_version()}; "
        f"training runs took {total / 60:.1f} minutes in all (per-run wall times in the tables); "
        f"generated {time.strftime('%Y-%m-%d')}.",
        "",
        *rate_section(rates, rate_seconds, "## 1. Compression rate of each encoding on the paper CNN"),
        "## 2-3. Accuracy, uplink bytes, bandwidth and client energy",
        "",
        "Same data, partition, seed and rounds for every run. FedZip's three encodings are lossless codes of the "
        "same quantized update, so each FedZip run is trained once (dap) and every payload is also transcoded "
        "(`fedzip.transcode`) to huffman and position: the accuracy is identical, the bytes are each encoding's "
        "own. *uplink MB*: every accepted reply as Flower carried it; *payload rate*: float32 update size / "
        "payload size; *radio energy saved* counts the upload and the (uncompressed) download of the global "
        "model. Under the Huang et al. model an upload's energy is proportional to its bytes, so the upload "
        "energy saved equals the bandwidth saved.",
        "",
    ]
    verdicts = []
    for plan, summaries in plans:
        if not summaries:
            continue
        section, facts = _plan_section(plan, summaries, out, assets)
        lines += section
        verdicts += _verdict(plan, facts)
    lines += [
        "## 4. The paper's targets",
        "",
        f"Target: at least {PAPER_RATIO:.0f}x real compression with final accuracy within 1 point of FedAvg, and "
        "fewer uplink bytes than STC to reach FedAvg's accuracy minus 1 point. Nothing was tuned on the test data: "
        "the plans were fixed before the runs.",
        "",
        *verdicts,
        "What limits it, as far as these runs show: compression around 1000x needs keeping about 0.3% of each "
        "update (real bytes per kept entry cannot go much below ~10 bits: a gap code and a label), and with "
        "that little sent per round the model learns more slowly, with or without error feedback; within the "
        "rounds run here, the sparse runs stay several points below FedAvg. The accuracy gaps per round above, "
        "and the 30-round plan (`paper-iid-long`), show whether a gap closes with more rounds. "
        "The paper's 1085x is close to what the authors' own *position* estimate gives at keep 0.001 on this "
        "CNN (section 1); whether that is where it comes from is a guess. As real bytes, the sparsity needed "
        "for ~1000x costs accuracy in this setting.",
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cpus() -> int:
    return os.cpu_count() or 1
