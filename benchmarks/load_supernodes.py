"""Many SuperNodes at once: a load run of fedzip on Flower's deployment engine, on loopback.

    python benchmarks/load_supernodes.py [--nodes 50] [--fraction 0.2] [--rounds 15]
        [--restart 2] [--restart-after 3] [--insecure] [--out results/load]

One SuperLink and ``--nodes`` SuperNodes (each its own process tree, as on its own
machine), TLS and SuperNode authentication unless ``--insecure``; fedzip's
ServerApp and ClientApp (examples/deployment) with compressed uploads (Top-z,
DAP, error feedback) and downloads (DAP, shared start), ``--fraction`` of the
nodes sampled per round. After round ``--restart-after``, ``--restart`` SuperNodes
are killed (SIGKILL, their node state lost) and started again with the same
key: the server still believes they hold its model, so their next download
must be detected as stale and resynchronised.

Writes ``load.json`` and ``load.md`` to ``--out`` (figures for docs/deployment.md):
replies and failures per round, round time, resident memory of the SuperLink's
process tree (SuperLink, SuperExec, ServerApp) and of each SuperNode's, and what
the restarted nodes were sent and answered (from the run's traffic.csv).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.federation import Federation

LOW_MEMORY_MB = 2500  # below this much available memory the run is stopped (and reported as such)


def group_rss_mb() -> dict[int, float]:
    """Resident memory (MB) of every process group on the machine, summed over its processes."""
    out: dict[int, float] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            pages = int(Path(f"/proc/{entry}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        pgid = int(stat.rsplit(")", 1)[1].split()[2])
        out[pgid] = out.get(pgid, 0.0) + pages * page / 1e6
    return out


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1e3
    return float("inf")


class MemoryWatch(threading.Thread):
    """Samples the process groups' memory every ``seconds``: each group's peak, and the peak of the
    SuperNodes' sum at one time. Calls ``on_low`` once if the machine runs low on memory."""

    def __init__(
        self, nodes: Callable[[], set[int]], on_low: Callable[[], None], seconds: float = 2.0
    ) -> None:
        super().__init__(daemon=True)
        self.nodes, self.on_low, self.seconds = nodes, on_low, seconds
        self.peaks: dict[int, float] = {}
        self.nodes_peak = 0.0  # all SuperNode trees together, at the worst sample
        self.low = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.seconds):
            groups = group_rss_mb()
            for pgid, mb in groups.items():
                self.peaks[pgid] = max(self.peaks.get(pgid, 0.0), mb)
            self.nodes_peak = max(self.nodes_peak, sum(groups.get(p, 0.0) for p in self.nodes()))
            if not self.low and available_mb() < LOW_MEMORY_MB:
                self.low = True
                self.on_low()


def read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path) as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


def node_id(log: Path) -> str | None:
    """The node id a SuperNode's log says it was given."""
    for line in log.read_text(errors="replace").splitlines():
        if "SuperNode ID:" in line:
            return line.rsplit(":", 1)[1].strip()
    return None


def restart(fed: Federation, index: int, partitions: int, seconds: float = 180) -> None:
    """Start SuperNode ``index`` again, as a supervisor would: until the SuperLink accepts it.

    With authentication the node comes back under its old id, which the
    SuperLink refuses to activate while it still counts the old process as
    online (until its heartbeats are overdue).
    """
    deadline = time.monotonic() + seconds
    while True:
        node = fed.start_node(index, partitions, register=False, wait=False)
        while node.process.poll() is None and "SuperNode ID" not in node.log.read_text(errors="replace"):
            time.sleep(0.5)
        if node.process.poll() is None:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"SuperNode {index} was not accepted again: {node.log.read_text()[-1000:]}")
        time.sleep(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--restart", type=int, default=2, help="SuperNodes killed and restarted mid-run")
    parser.add_argument("--restart-after", type=int, default=3, help="... after this round")
    parser.add_argument("--train-limit", type=int, default=20000, help="training images over all nodes")
    parser.add_argument("--insecure", action="store_true", help="no TLS, no SuperNode authentication")
    parser.add_argument("--out", type=Path, default=Path("results/load"))
    args = parser.parse_args(argv)
    if not 0 <= args.restart < args.nodes or not 0 < args.fraction <= 1:
        parser.error("--restart must be below --nodes and --fraction in (0, 1]")
    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="fedzip-load-"))
    results = folder / "results"
    fed = Federation(folder, secure=not args.insecure, keys=args.nodes)
    watch = MemoryWatch(lambda: {n.process.pid for n in fed.nodes.values()}, on_low=fed.stop)
    started = time.perf_counter()
    report: dict = {
        "nodes": args.nodes,
        "fraction": args.fraction,
        "rounds": args.rounds,
        "secure": fed.secure,
    }
    try:
        fed.start()
        for i in range(args.nodes):
            fed.start_node(i, args.nodes)
            if (i + 1) % 10 == 0 or i + 1 == args.nodes:
                print(f"SuperNodes up: {i + 1}/{args.nodes}", flush=True)
        report["start_seconds"] = round(time.perf_counter() - started, 1)
        print(f"{args.nodes} SuperNodes up in {report['start_seconds']} s; folder {folder}")
        watch.start()
        config = (
            f"clients={args.nodes} fraction={args.fraction} rounds={args.rounds} "
            f"min-clients={max(1, round(args.fraction * args.nodes))} node-wait=300 round-timeout=300 "
            f"train-limit={args.train_limit} test-limit=2000 codec='fedzip-dap' keep=0.01 "
            f"error-feedback=true downlink='fedzip-dap' downlink-keep=0.05 downlink-shared-start=true "
            f"out='{results}'"
        )
        run = fed.submit(config, stdout=open(folder / "flwr-run.log", "w"))  # noqa: SIM115
        restarted: list[int] = []
        shown = -1
        deadline = time.monotonic() + 3600
        while run.poll() is None and time.monotonic() < deadline:
            rows = read_csv(results / "metrics.csv")
            if not restarted and len(rows) > args.restart_after:
                restarted = list(range(args.restart))
                ids_before = {i: node_id(fed.nodes[i].log) for i in restarted}
                for i in restarted:
                    fed.kill(i)
                print(f"round {args.restart_after} done: killed SuperNodes {restarted}; restarting them")
                for i in restarted:
                    restart(fed, i, args.nodes)
                report["restart_round"] = len(rows) - 1
            if len(rows) != shown:
                shown = len(rows)
                print(f"rounds done: {max(shown - 1, 0)}/{args.rounds}", flush=True)
            time.sleep(2)
        if run.poll() is None:
            run.kill()
            raise RuntimeError("the run did not end within an hour")
        report["returncode"] = run.returncode
        time.sleep(3)  # the ServerApp writes its last files as it ends
    finally:
        watch.done.set()
        groups = {"link": fed.link.pid if fed.link else None}
        node_groups = {i: n.process.pid for i, n in fed.nodes.items()}
        fed.stop()
    report["seconds"] = round(time.perf_counter() - started, 1)
    rows = read_csv(results / "metrics.csv")[1:]
    traffic = read_csv(results / "traffic.csv")
    report["per_round"] = [
        {
            "round": int(r["round"]),
            "sampled": int(r["sampled"]),
            "accepted": int(r["accepted"]),
            "failures": int(r["failures"]),
            "reasons": r["failure_reasons"],
            "seconds": round(float(r["seconds"]), 2),
            "uplink_bytes": int(r["uplink_bytes"]),
            "downlink_bytes": int(r["downlink_bytes"]),
            "downlink_raw_bytes": int(r["downlink_raw_bytes"]),
            "dense_downloads": int(r["dense_downloads"]),
            "server_mb": float(r["memory_mb"]),
        }
        for r in rows
    ]
    node_peaks = [watch.peaks.get(pid, 0.0) for pid in node_groups.values()]
    report["memory_mb"] = {
        "superlink_tree_peak": round(watch.peaks.get(groups["link"], 0.0), 1),
        "serverapp_last": rows[-1]["memory_mb"] if rows else None,
        "supernode_tree_mean_peak": round(sum(node_peaks) / max(len(node_peaks), 1), 1),
        "supernode_tree_max_peak": round(max(node_peaks, default=0.0), 1),
        "all_supernodes_peak_at_once": round(watch.nodes_peak, 1),
        "stopped_for_low_memory": watch.low,
    }
    if restarted:
        after = report.get("restart_round", args.restart_after)
        report["restarted"] = {}
        for i in restarted:
            ids = (ids_before.get(i), node_id(fed.nodes[i].log))
            turns = [t for t in traffic if t["node"] in ids and int(t["round"]) > after]
            report["restarted"][str(i)] = {
                "node_id_before": ids[0],
                "node_id_after": ids[1],
                "attempts": len(list(folder.glob(f"supernode{i}-*.log"))),
                "turns_after_restart": [
                    {
                        k: t[k]
                        for k in ("round", "status", "down_bytes", "down_raw_bytes", "up_bytes", "reason")
                    }
                    for t in turns
                ],
            }
    report["traffic_rows"] = len(traffic)
    report["nodes_that_trained"] = len({t["node"] for t in traffic})
    (args.out / "load.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"# Load run: {args.nodes} SuperNodes, {args.fraction:.0%} sampled a round, {args.rounds} rounds",
        "",
        f"TLS and SuperNode authentication: {fed.secure}; {report['start_seconds']} s to start the "
        f"SuperNodes; whole run {report['seconds']} s; exit code {report.get('returncode')}.",
        "",
        "| round | sampled | accepted | failures | seconds | up KB | down KB | dense downloads | server MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["per_round"]:
        lines.append(
            f"| {r['round']} | {r['sampled']} | {r['accepted']} | {r['failures']} | {r['seconds']} | "
            f"{r['uplink_bytes'] / 1e3:.1f} | {r['downlink_bytes'] / 1e3:.1f} | {r['dense_downloads']} | "
            f"{r['server_mb']:.0f} |"
        )
    lines += ["", "Memory (MB): " + json.dumps(report["memory_mb"])]
    if restarted:
        lines += ["", f"Killed after round {after} and restarted:", ""]
        for i, node in report["restarted"].items():
            turns = "; ".join(
                f"round {t['round']}: {t['status']}, down {t['down_bytes']} B of {t['down_raw_bytes']}"
                + (f" ({t['reason'][:70]})" if t["reason"] else "")
                for t in node["turns_after_restart"]
            )
            lines.append(
                f"- SuperNode {i}: id {node['node_id_before']} -> {node['node_id_after']}, "
                f"{node['attempts']} start(s) to be accepted again; after the restart: {turns or 'not sampled'}"
            )
    (args.out / "load.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    # Only the restarted nodes may fail: unreachable while down, or holding no copy when back.
    expected = {
        v for node in report.get("restarted", {}).values() for v in node.values() if isinstance(v, str)
    }
    unexpected = [t for t in traffic if t["status"] != "accepted" and t["node"] not in expected]
    report["unexpected_failures"] = unexpected
    (args.out / "load.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nfiles: {args.out / 'load.json'}, {args.out / 'load.md'}; logs in {folder}")
    return 0 if report.get("returncode") == 0 and len(rows) == args.rounds and not unexpected else 1


if __name__ == "__main__":
    sys.exit(main())
