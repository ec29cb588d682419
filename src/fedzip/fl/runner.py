"""Run experiments on Flower's simulation engine and write their results."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .apps import serve
from .config import ExperimentConfig
from .data import find_data_dir
from .store import RoundRecord, write_results


def run_experiment(
    cfg: ExperimentConfig, show_progress: bool = True, fast_poll: bool = True
) -> dict[str, Any]:
    """One run on Flower's simulation engine (Ray), results written to ``cfg.out``.

    ``fast_poll`` shortens the engine's message polling (see ``polling``);
    ``False`` keeps Flower's own intervals (``fedzip bench --fl`` compares both).
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .apps import client_app
    from .polling import fast_polling, shorten_grid_polling

    find_data_dir(cfg.data.data_dir or None)  # fail early, with the install hint
    records: list[RoundRecord] = []
    errors: list[BaseException] = []
    progress = Progress(
        TextColumn("[bold]{task.fields[label]}"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        disable=not show_progress,
    )
    task = progress.add_task("run", total=cfg.server.rounds, label=cfg.label, status="starting")

    def on_round(record: RoundRecord) -> None:
        status = f"acc {record.accuracy:.4f}"
        if record.round:
            status += (
                f" | up {record.uplink_bytes / 1e6:.3f} MB | {record.ratio:.1f}x | fail {record.failures}"
            )
        progress.update(task, completed=record.round, status=status)

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        if fast_poll:
            shorten_grid_polling(grid)
        try:
            records.extend(serve(grid, cfg, on_round, out=Path(cfg.out)))
        except BaseException as exc:  # surfaced after the simulation stops
            errors.append(exc)
            raise

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)  # progress shows rounds and failures; details go to metrics.csv
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    started = time.perf_counter()
    try:
        with progress, fast_polling() if fast_poll else contextlib.nullcontext():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=cfg.server.clients,
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": {"log_to_driver": False, "include_dashboard": False},
                },
            )
    finally:
        flwr_logger.setLevel(level)
    if errors:
        raise RuntimeError(f"the server app failed: {errors[0]}") from errors[0]
    if len(records) != cfg.server.rounds + 1:
        raise RuntimeError(
            f"the simulation stopped after {max(len(records) - 1, 0)} of {cfg.server.rounds} rounds"
        )
    return write_results(Path(cfg.out), cfg, records, time.perf_counter() - started)


def compare(
    cfg: ExperimentConfig,
    codecs: Sequence[str],
    out: Path,
    show_progress: bool = True,
    target: float | None = None,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run each codec (``stc``, ``fedzip-dap+ef``, ...; see :meth:`ExperimentConfig.with_codec`) on the
    same data, partition and seed; write report.md and plots. ``options`` (keep, clusters, ...) apply
    to the codecs that take them."""
    from .config import compressor_options, parse_codec
    from .report import write_report

    summaries = []
    for name in codecs:
        taken = compressor_options(parse_codec(name)[0]["id"])
        chosen = {k: v for k, v in (options or {}).items() if k in taken}
        run_cfg = cfg.with_codec(name, chosen).replace(out=str(out / name.replace("+", "_")))
        summaries.append(run_experiment(run_cfg, show_progress))
    write_report(out, summaries, target)
    return summaries
