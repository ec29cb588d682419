"""Rendering: the results document's client radio energy section."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedzip.energy import get_link, saved_percent
from fedzip.fl.models import build, parameter_count
from fedzip.fl.plan import Plan

from .analysis import settings, trained_like
from .runs import RunSeeds, fedavg_runs


def energy_lines(plans: Sequence[tuple[Plan, dict[str, RunSeeds]]], link_name: str = "lte") -> list[str]:
    """Client radio energy per round under the full model (promotion and tail), from the runs' bytes."""
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
            np.mean([s["uplink_bytes"] / max(1, s["rounds"] * g.config.server.clients) for s in g.summaries])
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
            if g.config.download is not None:
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
