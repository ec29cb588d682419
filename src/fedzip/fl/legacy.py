"""The flat experiment configs of fedzip 0.1 (plan files, runs on disk), migrated to the sectioned shape.

A flat config meant what fedzip 0.1 made of it, defaults included (keep
0.01, 3 clusters, 16 QSGD levels; a download's keep and clusters those of
the upload), so a run on disk compares equal to the same run planned today.
Options a codec's mode ignored then (keep with a budget, ...) are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULTS: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "data_dir": "",
    "partition": "iid",
    "model": "mlp",
    "clients": 10,
    "fraction": 1.0,
    "rounds": 10,
    "local_epochs": 1,
    "batch_size": 32,
    "optimizer": "sgd",
    "lr": 0.05,
    "lr_schedule": "constant",
    "lr_final": 0.0,
    "codec": "fedzip-dap",
    "keep": 0.01,
    "clusters": 3,
    "levels": 16,
    "rank": 0,
    "iterations": 0,
    "link": "lte",
    "energy_train_seconds": 0.0,
    "error_feedback": False,
    "seed": 0,
    "train_limit": 0,
    "test_limit": 0,
    "validation": 0,
    "test_every": 1,
    "transcode": False,
    "budget_bytes": 0,
    "budget_ratio": 0.0,
    "budget_split": "error",
    "warmup_rounds": 0,
    "warmup_start": 0.25,
    "ef_momentum": 0.0,
    "masking": True,
    "clip_norm": 0.0,
    "local_momentum": 0.0,
    "server_optimizer": "fedavg",
    "server_lr": 0.0,
    "server_momentum": 0.9,
    "downlink": "",
    "downlink_keep": 0.0,
    "downlink_budget_ratio": 0.0,
    "downlink_rank": 0,
    "downlink_clusters": 0,
    "downlink_iterations": 0,
    "downlink_shared_start": False,
    "corrupt_clients": [],
    "min_clients": 1,
    "node_wait": 120.0,
    "round_timeout": 600.0,
    "out": "runs/run",
}
# Keys that stayed at the top level of the sectioned shape.
TOP_LEVEL = ("model", "seed", "link", "energy_train_seconds", "transcode", "corrupt_clients", "out")
SECTION_KEYS = {
    "data": {k: k for k in ("dataset", "data_dir", "partition", "train_limit", "test_limit", "validation")},
    "training": {
        **{k: k for k in ("local_epochs", "batch_size", "optimizer", "lr", "lr_schedule", "lr_final")},
        "momentum": "local_momentum",
    },
    "server": {
        **{
            k: k
            for k in (
                "clients",
                "fraction",
                "rounds",
                "test_every",
                "min_clients",
                "node_wait",
                "round_timeout",
            )
        },
        "optimizer": "server_optimizer",
        "lr": "server_lr",
        "momentum": "server_momentum",
        "shared_start": "downlink_shared_start",
    },
    "error_feedback": {"momentum": "ef_momentum", "masking": "masking", "clip_norm": "clip_norm"},
    "warmup": {"rounds": "warmup_rounds", "start": "warmup_start"},
}


def is_flat(values: Mapping[str, Any]) -> bool:
    """Whether ``values`` is a flat config of fedzip 0.1 (``error_feedback`` a bool, or a flat-only key)."""
    flat_only = set(DEFAULTS) - set(TOP_LEVEL) - {"error_feedback"}
    return isinstance(values.get("error_feedback"), bool) or any(key in flat_only for key in values)


def _codec(
    name: str,
    values: Mapping[str, Any],
    keep: float,
    budget_ratio: float,
    rank: int,
    clusters: Any,
    iterations: int,
    budget_bytes: int = 0,
) -> dict[str, Any]:
    """A 0.1 codec name and its flat options as a compressor config."""
    base = name.partition("+")[0]
    if base in ("none", "fp16", "signsgd"):
        return {"id": base}
    if base in ("topk", "stc"):
        return {"id": base, "keep": keep}
    if base == "qsgd":
        return {"id": "qsgd", "levels": values["levels"]}
    config: dict[str, Any]
    if base == "lowrank":
        config = {"id": "lowrank", "rank": rank or 1, "clusters": clusters}
    elif base.startswith("fedzip-"):
        config = {"id": "fedzip", "encoding": base.split("-", 1)[1]}
        if budget_bytes or budget_ratio:
            config.update({"budget_bytes": budget_bytes} if budget_bytes else {"budget_ratio": budget_ratio})
            if values["budget_split"] != "error":  # the uniform split uses its clusters; keep was ignored
                config.update(budget_split=values["budget_split"], clusters=clusters)
        else:
            config.update(keep=keep, clusters=clusters)
            if rank:
                config["rank"] = rank
    else:
        raise ValueError(f"unknown codec {name!r} in a flat config")
    if iterations:
        config["iterations"] = iterations
    return config


def migrate(values: Mapping[str, Any]) -> dict[str, Any]:
    """A flat 0.1 config as the sectioned settings :class:`~fedzip.fl.config.ExperimentConfig` takes."""
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(DEFAULTS))}")
    flat = {**DEFAULTS, **values}
    name = str(flat["codec"])
    feedback = bool(flat["error_feedback"]) or name.endswith("+ef") or name.partition("+")[0] == "stc"
    out: dict[str, Any] = {key: flat[key] for key in TOP_LEVEL}
    for section, keys in SECTION_KEYS.items():
        out[section] = {new: flat[old] for new, old in keys.items()}
    out["error_feedback"]["enabled"] = feedback
    out["upload"] = _codec(
        name,
        flat,
        flat["keep"],
        flat["budget_ratio"],
        flat["rank"],
        flat["clusters"],
        flat["iterations"],
        flat["budget_bytes"],
    )
    if flat["downlink"]:
        out["download"] = _codec(
            flat["downlink"],
            flat,
            flat["downlink_keep"] or flat["keep"],
            flat["downlink_budget_ratio"],
            flat["downlink_rank"],
            flat["downlink_clusters"] or flat["clusters"],
            flat["downlink_iterations"],
        )
    return out
