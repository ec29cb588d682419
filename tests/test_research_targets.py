"""Compression against accuracy: families, the validation frontier, seed pairing and the target picks."""

import pytest

pytest.importorskip("matplotlib")

from research.analysis import Point, family, paired, points
from research.document import write_document
from research.render import curve_lines, target_lines
from research.runs import RunSeeds
from research.targets import frontier

from fedzip.fl.config import ExperimentConfig
from fedzip.fl.plan import Plan, PlannedRun

MODEL = 4_000_000


class Settings(dict):
    """Flat settings as the plan files write them; ``replace`` builds a run's config from them."""

    def replace(self, **changes):
        return ExperimentConfig.from_dict({**self, **changes})


def metrics(values, test):
    """One seed's rows: validation accuracy per round (round 0 first), 1,000 payload bytes a round."""
    return [
        {
            "round": float(r),
            "accuracy": test if r == len(values) - 1 else float("nan"),
            "val_accuracy": v,
            "payload_bytes": 0.0 if r == 0 else 1000.0,
            "clients": 0 if r == 0 else 10,
            "client_train_seconds": 1.0,
        }
        for r, v in enumerate(values)
    ]


def run_seeds(name, cfg, finals, rate=1.0, curve=None, seeds=None, downlink_bytes=0):
    """A run over seeds: final (test, validation) per seed, a validation curve, a whole-run rate."""
    group = RunSeeds(name)
    for index, (test, val) in enumerate(finals):
        seed = seeds[index] if seeds else index
        values = curve or [0.1, val]
        payload = 1000.0 * (len(values) - 1)
        group.runs.append(PlannedRun(name, cfg.replace(seed=seed), seed))
        group.summaries.append(
            {
                "payload_bytes": payload,
                "payload_compression_rate": rate,
                "model_bytes": MODEL,
                "downlink_bytes": downlink_bytes,
                "rounds": len(values) - 1,
                "uplink_bytes": payload,
                "wall_seconds": 1.0,
            }
        )
        group.metrics.append(metrics(values, test))
    return group


def fedavg_reference(cfg):
    """FedAvg on 3 seeds, 0.90 at the end of a 3-round validation curve: the targets' reference."""
    return run_seeds("fedavg", cfg.replace(codec="none"), [(0.90, 0.90)] * 3, curve=[0.1, 0.5, 0.8, 0.9])


def plan_points(cfg, runs):
    """The points of one plan "p" holding ``runs`` (name -> RunSeeds)."""
    return points([(Plan("p", cfg.replace(), ()), runs)])


def targets(cfg, runs):
    """The targets table of one plan "p" holding ``runs``, FedAvg under "fedavg"."""
    return target_lines("p", plan_points(cfg, runs), runs["fedavg"])


def target_row(lines, prefix):
    """The targets table's row that starts with ``prefix``."""
    return next(line for line in lines if line.startswith(prefix))


def test_families_name_codecs_as_papers_do():
    base = Settings()
    assert family(base.replace(codec="none")) is None
    assert family(base.replace(codec="fedzip-dap", error_feedback=True)) == "FedZip"
    assert family(base.replace(codec="stc", error_feedback=True)) == "STC"
    assert family(base.replace(codec="topk", error_feedback=True)) == "Top-k+EF"
    assert family(base.replace(codec="topk")) == "Top-k"
    assert family(base.replace(codec="signsgd", error_feedback=True)) == "EF-signSGD"
    assert family(base.replace(codec="qsgd")) == "QSGD"
    assert family(base.replace(codec="lowrank", error_feedback=True)) == "Low-rank+EF"


def point(rate, val, name="x"):
    return Point("plan", name, "FedZip", RunSeeds(name), rate, val, val)


def test_frontier_keeps_only_runs_nobody_beats_on_both_axes():
    a, b, c, d = point(50, 0.90, "a"), point(300, 0.89, "b"), point(300, 0.88, "c"), point(1000, 0.895, "d")
    kept = frontier([a, b, c, d])
    assert [p.name for p in kept] == ["a", "d"]  # b and c compress less than d and score lower
    assert [p.name for p in frontier([a, b, c])] == ["a", "b"]
    # measured on 3 seeds, b is not pushed off the line by d's single seed; a 3-seed d would
    b.group.runs = [None] * 3
    assert [p.name for p in frontier([a, b, d])] == ["a", "b", "d"]
    d.group.runs = [None] * 3
    assert [p.name for p in frontier([a, b, d])] == ["a", "d"]


def test_deltas_pair_seeds_that_both_runs_have():
    cfg = Settings()
    fedavg = run_seeds("fedavg", cfg.replace(codec="none"), [(0.90, 0.9), (0.80, 0.8), (0.70, 0.7)])
    one = run_seeds("x", cfg, [(0.85, 0.85)], seeds=[1])
    assert paired(one, fedavg).tolist() == pytest.approx([0.05])
    assert paired(fedavg, fedavg).tolist() == [0.0, 0.0, 0.0]


def test_targets_are_picked_on_validation_not_test():
    cfg = Settings(rounds=3)
    fedavg = fedavg_reference(cfg)
    # Both compress >= 1085x; "high-val" wins on validation even though "high-test" has the better test score.
    high_val = run_seeds(
        "high-val", cfg.replace(budget_ratio=1100.0), [(0.885, 0.895)] * 3, 1100.0, [0.1, 0.89, 0.89, 0.895]
    )
    high_test = run_seeds("high-test", cfg.replace(budget_ratio=1200.0), [(0.90, 0.85)] * 3, 1200.0)
    stc = run_seeds(
        "stc",
        cfg.replace(codec="stc", error_feedback=True, keep=0.0025),
        [(0.87, 0.87)] * 3,
        1000.0,
        [0.1, 0.5, 0.885, 0.89],
    )
    lines = targets(cfg, {"fedavg": fedavg, "high-val": high_val, "high-test": high_test, "stc": stc})
    paper_row = target_row(lines, "| ≥1085x")
    assert (
        "p/high-val" in paper_row and "1100x" in paper_row and "-1.50" in paper_row and "| no |" in paper_row
    )
    assert "no FedZip run at ≥2000x" in "\n".join(lines)
    fewer = target_row(lines, "| fewer bytes")
    # high-val reaches 0.89 (FedAvg's 0.90 - 1 pt) in round 1 (1,000 B), STC in round 3 (3,000 B)
    assert "p/high-val" in fewer and "0.001 (3/3)" in fewer and fewer.endswith("| yes |")


def test_document_shows_both_ways_compression_when_downloads_are_compressed(tmp_path, monkeypatch):
    cfg = Settings(rounds=1)
    fedavg = run_seeds("fedavg", cfg.replace(codec="none"), [(0.9, 0.9)], rate=1.0)
    down = run_seeds(
        "down",
        cfg.replace(budget_ratio=1000.0, downlink="fedzip-dap", downlink_shared_start=True),
        [(0.9, 0.9)],
        1000.0,
        downlink_bytes=20_000,
    )
    plan = Plan("p", cfg.replace(), ())
    results = [(r, s) for g in (fedavg, down) for r, s in zip(g.runs, g.summaries, strict=True)]
    monkeypatch.setattr("research.document.group", lambda _: {"fedavg": fedavg, "down": down})
    text = write_document(tmp_path / "results.md", [(plan, results)]).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| down |"))
    # up: 1000x of 1,000 B = 1e6 float32 bytes; down: 10 clients x 4 MB float32 against 20 kB sent
    assert row.endswith(f" {(1e6 + 10 * MODEL) / (1000 + 20_000):.1f}x |")
    fedavg_row = next(line for line in text.splitlines() if line.startswith("| fedavg |"))
    assert "budget" not in fedavg_row and "budget 1/1000 of float32" in row and "shared start" in row
    assert "findings.md" not in text
    (tmp_path / "findings.md").write_text("# by hand\n")
    text = write_document(tmp_path / "results.md", [(plan, results)]).read_text()
    assert "[findings.md](findings.md)" in text  # the analysis kept by hand, linked once it exists


def test_energy_rows_use_the_downloads_a_run_actually_carried(tmp_path, monkeypatch):
    from fedzip.energy import get_link
    from fedzip.fl.models import build, parameter_count

    cfg = Settings(rounds=1, model="cnn")
    fedavg = run_seeds("fedavg", cfg.replace(codec="none"), [(0.9, 0.9)], rate=1.0)
    sparse = run_seeds("sparse", cfg.replace(codec="stc"), [(0.9, 0.9)], rate=1000.0)
    down = run_seeds(
        "down", cfg.replace(codec="stc", downlink="stc"), [(0.9, 0.9)], 1000.0, downlink_bytes=50_000
    )
    base, other = Plan("base", cfg.replace(), ()), Plan("more", cfg.replace(), (), reference="base")
    base_results = [(r, s) for g in (fedavg, sparse) for r, s in zip(g.runs, g.summaries, strict=True)]
    other_results = [(r, s) for r, s in zip(down.runs, down.summaries, strict=True)]
    groups = {id(base_results): {"fedavg": fedavg, "sparse": sparse}, id(other_results): {"down": down}}
    monkeypatch.setattr("research.document.group", lambda results: groups[id(results)])
    text = write_document(tmp_path / "results.md", [(base, base_results), (other, other_results)]).read_text()
    energy = text.split("## Client radio energy per round")[1]
    rows = {line.split(" | ")[0][2:]: line for line in energy.splitlines() if line.startswith("| ")}
    model = 4 * parameter_count(build("cnn"))
    lte = get_link("lte")
    # each reply uploads 1,000 B / 10 clients = 100 B; the measured run downloaded 50,000 B / 10 messages
    measured = lte.round_joules(5_000, 100, 1.0).total
    assert rows["more/down"].split(" | ")[6] == "5,000"
    assert rows["more/down"].endswith(
        f"| {measured:.2f} | {100 * (1 - measured / lte.round_joules(model, 100, 1.0).total):.1f}% |"
    )
    # a run that did not compress downloads gets the illustration, marked as assumed
    assert "(assumed)" in rows["sparse"] and "(assumed)" not in rows["more/down"]
    assert rows["fedavg"].split(" | ")[6] == f"{model:,}" and rows["fedavg"].endswith("| 0.0% |")


def test_a_pick_with_fewer_than_three_seeds_makes_no_claim():
    cfg = Settings(rounds=3)
    fedavg = fedavg_reference(cfg)
    one_seed = run_seeds("one", cfg.replace(budget_ratio=1100.0), [(0.9, 0.9)], 1100.0, [0.1, 0.89, 0.9, 0.9])
    stc = run_seeds(
        "stc", cfg.replace(codec="stc", keep=0.0025), [(0.87, 0.87)] * 3, 1000.0, [0.1, 0.5, 0.8, 0.87]
    )
    lines = targets(cfg, {"fedavg": fedavg, "one": one_seed, "stc": stc})
    rows = [line for line in lines if line.startswith(("| ≥1085x", "| fewer"))]
    assert len(rows) == 2 and all(row.endswith("(fewer than 3 seeds: no claim) |") for row in rows)


def test_the_both_ways_target_counts_downloads_and_picks_on_validation():
    cfg = Settings(rounds=3)
    fedavg = fedavg_reference(cfg)
    # uploads only: 1100x up, but every client downloads the float32 model
    up_only = run_seeds("up-only", cfg.replace(budget_ratio=1100.0), [(0.90, 0.92)] * 3, 1100.0)
    down = cfg.replace(budget_ratio=1100.0, downlink="fedzip-dap")
    # one round: (1100 x 1,000 B up + 10 downloads x 4 MB) / (1,000 B + 50,000 B) = 806x both ways
    both = run_seeds("both", down, [(0.895, 0.895)] * 3, 1100.0, downlink_bytes=50_000)
    # a better validation accuracy, but 100 kB down: 407x both ways
    loose = run_seeds("loose", down, [(0.90, 0.91)] * 3, 1100.0, downlink_bytes=100_000)
    runs = {"fedavg": fedavg, "up-only": up_only, "both": both, "loose": loose}
    row = target_row(targets(cfg, runs), "| ≥500x up")
    assert "p/both" in row and "806x both ways" in row and "-0.50" in row and row.endswith("| yes |")
    one = run_seeds("one", down, [(0.90, 0.90)], 1100.0, downlink_bytes=1_000)
    runs["one"] = one
    del runs["both"]  # a pick confirmed on 3 seeds would be preferred
    row = target_row(targets(cfg, runs), "| ≥500x up")
    assert "p/one" in row and row.endswith("(fewer than 3 seeds: no claim) |")


def test_when_clients_are_sampled_the_targets_are_1000x_up_300x_both_ways_and_300x_without_state():
    cfg = Settings(rounds=3, clients=100, fraction=0.1)
    fedavg = fedavg_reference(cfg)
    # the best at 1000x keeps residuals (error feedback): it cannot be the stateless pick
    with_state = run_seeds("ef", cfg.replace(rank=2, error_feedback=True), [(0.895, 0.90)] * 3, 1100.0)
    stateless = run_seeds("rank-6", cfg.replace(rank=6), [(0.885, 0.89)] * 3, 380.0)
    too_small = run_seeds("rank-16", cfg.replace(rank=16), [(0.90, 0.90)] * 3, 150.0)
    runs = {"fedavg": fedavg, "ef": with_state, "rank-6": stateless, "rank-16": too_small}
    lines = targets(cfg, runs)
    assert not [line for line in lines if line.startswith(("| ≥1085x", "| ≥2000x", "| ≥500x"))]
    assert "p/ef" in target_row(lines, "| ≥1000x within 1 pt") and target_row(lines, "| ≥1000x").endswith(
        "| yes |"
    )
    row = target_row(lines, "| ≥300x with no client state within 1 pt")
    assert "p/rank-6" in row and "-1.50" in row and row.endswith("| no |")
    assert "no FedZip run at ≥300x both ways" in target_row(lines, "| ≥300x up + down")
    # every client every round: the full-participation targets
    assert target_row(
        targets(Settings(rounds=3), {"fedavg": fedavg_reference(Settings(rounds=3))}), "| ≥1085x"
    )


def test_other_models_are_judged_at_1000x_and_the_knob_alone_has_its_own_row():
    cfg = Settings(rounds=3, model="vit")
    fedavg = fedavg_reference(cfg)
    knob = run_seeds(
        "knob", cfg.replace(budget_ratio=1000.0, error_feedback=True), [(0.8905, 0.895)] * 3, 1000.0
    )
    # the same budget told how to split is not the knob alone
    uniform = cfg.replace(budget_ratio=1000.0, budget_split="uniform")
    split = run_seeds("uniform", uniform, [(0.895, 0.90)] * 3, 1000.0)
    runs = {"fedavg": fedavg, "knob": knob, "uniform": split}
    lines = targets(cfg, runs)
    assert not [line for line in lines if line.startswith(("| ≥1085x", "| ≥2000x", "| ≥500x"))]
    assert "p/uniform" in target_row(lines, "| ≥1000x within 1 pt")  # the best on validation at 1000x
    row = target_row(lines, "| `FedZip(budget_ratio=1000)` alone within 1 pt")
    assert "p/knob" in row and "-0.95" in row and row.endswith("| yes |")
    del runs["knob"]
    assert not [line for line in targets(cfg, runs) if "alone within" in line]
    # the same codec without error feedback, or with clients sampled, is not the README's line
    runs["bare"] = run_seeds(
        "bare", cfg.replace(budget_ratio=1000.0, error_feedback=False), [(0.89, 0.9)], 1000.0
    )
    assert not [line for line in targets(cfg, runs) if "alone within" in line]
    sampled = Settings(rounds=3, model="vit", clients=100, fraction=0.1)
    knob = run_seeds(
        "knob", sampled.replace(budget_ratio=1000.0, error_feedback=True), [(0.8905, 0.895)] * 3, 1000.0
    )
    lines = targets(sampled, {"fedavg": fedavg_reference(sampled), "knob": knob})
    assert not [line for line in lines if "alone within" in line]


def test_a_pick_confirmed_on_three_seeds_is_not_beaten_by_a_lucky_single_seed():
    cfg = Settings(rounds=3)
    fedavg = fedavg_reference(cfg)
    lucky = run_seeds("lucky", cfg.replace(budget_ratio=1100.0), [(0.89, 0.93)], 1100.0)
    confirmed = run_seeds("confirmed", cfg.replace(budget_ratio=1100.0), [(0.895, 0.90)] * 3, 1100.0)
    runs = {"fedavg": fedavg, "lucky": lucky, "confirmed": confirmed}
    row = target_row(targets(cfg, runs), "| ≥1085x")
    assert "p/confirmed" in row and "| 3 |" in row and row.endswith("| yes |")
    del runs["confirmed"]
    row = target_row(targets(cfg, runs), "| ≥1085x")
    assert "p/lucky" in row and row.endswith("(fewer than 3 seeds: no claim) |")
    runs["lucky"] = run_seeds("lucky", cfg.replace(budget_ratio=1100.0), [(0.85, 0.85)], 1100.0)
    row = target_row(targets(cfg, runs), "| ≥1085x")
    assert "| – (0/1) |" in row  # it never reached FedAvg − 1 point: no bytes to show


def test_targets_say_whether_a_pick_was_still_rising():
    cfg = Settings(rounds=20)
    flat = [0.1] + [0.90] * 20
    rising = [0.1] + [0.80 + 0.005 * r for r in range(20)]  # +0.5 points a round
    fedavg = run_seeds("fedavg", cfg.replace(codec="none"), [(0.90, 0.90)] * 3, curve=flat)
    pick = run_seeds("pick", cfg.replace(budget_ratio=1100.0), [(0.89, 0.895)] * 3, 1100.0, rising)
    lines = targets(cfg, {"fedavg": fedavg, "pick": pick})
    row = target_row(lines, "| ≥1085x")
    # rounds 16-18 against 18-20: two rounds apart, +1.00 point; FedAvg +0.00
    assert row.split(" | ")[6] == "+1.00"
    assert any("FedAvg's: +0.00" in line for line in lines)


def test_fewer_bytes_counts_a_seed_that_never_reaches_as_unbounded():
    cfg = Settings(rounds=3)
    fedavg = fedavg_reference(cfg)
    stc_cfg = cfg.replace(codec="stc", error_feedback=True, keep=0.005)
    # STC reaches 0.89 in round 1 (1,000 B) with one seed, never with the other two
    stc = run_seeds("stc", stc_cfg, [(0.88, 0.88)] * 3, 600.0, [0.1, 0.89, 0.88, 0.88])
    stc.metrics[1] = stc.metrics[2] = metrics([0.1, 0.8, 0.85, 0.88], 0.88)
    # "slow" reaches with every seed in round 3 (3,000 B); "fast" in round 1 but with two seeds only
    slow = run_seeds(
        "slow", cfg.replace(budget_ratio=600.0), [(0.895, 0.895)] * 3, 600.0, [0.1, 0.5, 0.8, 0.895]
    )
    fast = run_seeds(
        "fast", cfg.replace(budget_ratio=700.0), [(0.895, 0.895)] * 3, 700.0, [0.1, 0.89, 0.89, 0.895]
    )
    fast.metrics[2] = metrics([0.1, 0.8, 0.85, 0.88], 0.88)
    runs = {"fedavg": fedavg, "stc": stc, "slow": slow, "fast": fast}
    lines = targets(cfg, runs)
    assert "0.001 (1/3)" in target_row(lines, "| STC at its best p")
    fewer = target_row(lines, "| fewer bytes")
    assert "p/slow" in fewer and "0.003 (3/3)" in fewer and fewer.endswith("| yes |")
    # once STC reaches with every seed in fewer bytes, the same pick is not fewer
    stc.metrics[1] = stc.metrics[2] = stc.metrics[0]
    fewer = target_row(targets(cfg, runs), "| fewer bytes")
    assert "p/slow" in fewer and fewer.endswith("| no |")


def test_runs_that_compress_downloads_are_not_uplink_picks():
    """Their accuracy depends on the downloads: they compete in the both-ways row only."""
    cfg = Settings(rounds=3)
    fedavg = fedavg_reference(cfg)
    plain = run_seeds("plain", cfg.replace(budget_ratio=1100.0), [(0.88, 0.88)] * 3, 1100.0)
    down = cfg.replace(budget_ratio=1100.0, downlink="fedzip-dap")
    both = run_seeds("both", down, [(0.89, 0.89)] * 3, 1100.0, downlink_bytes=1_000)
    stc_down = run_seeds("stc-down", cfg.replace(codec="stc", downlink="stc"), [(0.90, 0.90)] * 3, 1000.0)
    stc = run_seeds("stc", cfg.replace(codec="stc"), [(0.87, 0.87)] * 3, 1000.0)
    lines = targets(cfg, {"fedavg": fedavg, "plain": plain, "both": both, "stc-down": stc_down, "stc": stc})
    assert "p/plain" in target_row(lines, "| ≥1085x")
    assert "p/both" in target_row(lines, "| ≥500x up")
    assert "p/stc " in target_row(lines, "| STC at its best p")


def test_the_curve_table_counts_each_family_and_says_whether_the_curve_is_complete():
    cfg = Settings(rounds=3)
    fedavg = fedavg_reference(cfg)  # validation 0.90: within a point is >= 0.89
    runs = {"fedavg": fedavg}
    for ratio, val in ((30, 0.90), (100, 0.90), (300, 0.895), (1000, 0.885), (2000, 0.88), (10000, 0.80)):
        runs[f"b{ratio}"] = run_seeds(
            f"b{ratio}", cfg.replace(budget_ratio=float(ratio)), [(val, val)], float(ratio)
        )
    runs["stc"] = run_seeds("stc", cfg.replace(codec="stc", error_feedback=True), [(0.89, 0.89)] * 3, 400.0)
    runs["down"] = run_seeds(
        "down", cfg.replace(budget_ratio=50.0, downlink="fedzip-dap"), [(0.9, 0.9)], 50.0
    )

    lines = curve_lines(plan_points(cfg, runs), fedavg)
    fedzip = target_row(lines, "| FedZip")
    # six FedZip runs, the downloads-compressing one left off; 10000x is beyond the range asked for
    assert fedzip.startswith("| FedZip | 6 | 30x – 10000x | 0 | p/b300 (300x) | -0.50 |")
    assert target_row(lines, "| STC").startswith("| STC | 1 | 400x | 1 | p/stc (400x) | -1.00 ± 0.00 |")
    summary = next(line for line in lines if line.startswith("The curve"))
    assert "FedZip has 5 runs in that range" in summary and "Top-k+EF, EF-signSGD, QSGD" in summary
    assert "**not complete**" in summary

    for name, codec, feedback in (("topk", "topk", True), ("sign", "signsgd", True), ("qsgd", "qsgd", False)):
        runs[name] = run_seeds(name, cfg.replace(codec=codec, error_feedback=feedback), [(0.8, 0.8)], 32.0)
    assert "**not complete**" in "\n".join(
        curve_lines(plan_points(cfg, runs), fedavg)
    )  # still five FedZip runs from 30x to 3000x
    runs["b3000"] = run_seeds("b3000", cfg.replace(budget_ratio=3000.0), [(0.8, 0.8)], 3003.0)
    lines = curve_lines(plan_points(cfg, runs), fedavg)
    assert "**complete**" in "\n".join(lines) and target_row(lines, "| QSGD").startswith(
        "| QSGD | 1 | 32x | 0 | – |"
    )


def test_a_run_with_a_learning_rate_schedule_is_measured_against_fedavg_with_that_schedule():
    cfg = Settings(rounds=3)
    cosine = {"lr_schedule": "cosine", "lr_final": 0.0}
    fedavg = fedavg_reference(cfg)  # 0.90 on every seed, constant lr: the main reference
    fedavg_cosine = run_seeds("fedavg-cos", cfg.replace(codec="none", **cosine), [(0.93, 0.93)] * 3)
    down = cfg.replace(budget_ratio=1100.0, downlink="fedzip-dap", **cosine)
    both = run_seeds("both-cos", down, [(0.925, 0.93)] * 3, 1100.0, downlink_bytes=50_000)
    runs = {"fedavg": fedavg, "fedavg-cos": fedavg_cosine, "both-cos": both}
    row = target_row(targets(cfg, runs), "| ≥500x up")
    # against FedAvg with the same schedule (0.93): half a point behind, not 2.5 ahead of constant FedAvg
    assert "p/both-cos" in row and row.endswith("| yes |")
    assert "-0.50 ± 0.00 (vs FedAvg, cosine lr 0.05 to 0; 2.50 ± 0.00 vs the plan's FedAvg)" in row
    # FedAvg trained alike on one seed of the three: the verdict rests on one seed: no claim
    runs["fedavg-cos"] = run_seeds("fedavg-cos", fedavg_cosine.config, [(0.93, 0.93)])
    row = target_row(targets(cfg, runs), "| ≥500x up")
    assert row.endswith("| yes (fewer than 3 seeds: no claim) |")
    # within a point of FedAvg trained alike but not of the plan's FedAvg: not credited
    runs["fedavg-cos"] = run_seeds("fedavg-cos", fedavg_cosine.config, [(0.87, 0.93)] * 3)
    runs["both-cos"] = run_seeds("both-cos", down, [(0.885, 0.93)] * 3, 1100.0, downlink_bytes=50_000)
    row = target_row(targets(cfg, runs), "| ≥500x up")
    assert "1.50 ± 0.00 (vs FedAvg" in row and "-1.50 ± 0.00 vs the plan's FedAvg" in row
    assert row.endswith("| no |")
    # without FedAvg trained alike there is nothing to compare with: no verdict of "yes"
    del runs["fedavg-cos"]
    row = target_row(targets(cfg, runs), "| ≥500x up")
    assert "– (no FedAvg run trains alike)" in row and row.endswith("| no (fewer than 3 seeds: no claim) |")


def test_plan_rows_pair_each_run_with_the_fedavg_run_that_trains_alike(tmp_path, monkeypatch):
    cfg = Settings(rounds=1)
    fedavg = run_seeds("fedavg", cfg.replace(codec="none"), [(0.90, 0.9)])
    const = run_seeds("const", cfg.replace(codec="stc"), [(0.88, 0.9)], 1000.0)
    cosine = {"lr_schedule": "cosine", "lr_final": 0.001}
    fedavg_cosine = run_seeds("fedavg-cos", cfg.replace(codec="none", **cosine), [(0.95, 0.9)])
    stc_cosine = run_seeds("stc-cos", cfg.replace(codec="stc", **cosine), [(0.94, 0.9)], 1000.0)
    adam = run_seeds("stc-adam", cfg.replace(codec="stc", optimizer="adam"), [(0.91, 0.9)], 1000.0)
    # the constant-lr FedAvg is in the plan the others name as reference, listed after its cosine twin
    base, more = Plan("base", cfg.replace(), ()), Plan("more", cfg.replace(), (), reference="base")
    base_groups = {"fedavg": fedavg, "const": const}
    more_groups = {"fedavg-cos": fedavg_cosine, "stc-cos": stc_cosine, "stc-adam": adam}
    results = {}
    for name, groups in (("base", base_groups), ("more", more_groups)):
        results[name] = [(r, s) for g in groups.values() for r, s in zip(g.runs, g.summaries, strict=True)]
    by_id = {id(results["base"]): base_groups, id(results["more"]): more_groups}
    monkeypatch.setattr("research.document.group", lambda r: by_id[id(r)])
    text = write_document(tmp_path / "results.md", [(base, results["base"]), (more, results["more"])])
    rows = {}
    for line in text.read_text().splitlines():  # the plans' tables come first
        rows.setdefault(line.split(" | ")[0][2:], line.split(" | "))
    assert rows["const"][3] == "-2.00" and rows["stc-cos"][3] == "-1.00"  # 0.94 - 0.95, not + 4 points
    assert rows["fedavg-cos"][3] == "0.00" and rows["stc-adam"][3] == "–"
    assert rows["stc-cos"][1].endswith(", cosine lr 0.05 to 0.001") and rows["stc-adam"][1].endswith(", adam")
    assert "FedAvg reference: the `fedavg` run of plan `base`" in text.read_text()
