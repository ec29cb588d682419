import pytest

from fedzip import energy


def test_upload_energy_follows_the_power_model():
    link = energy.Link("test", alpha_up=400.0, alpha_down=50.0, beta=1000.0, up_mbps=5.0, down_mbps=10.0)
    # 1 MB at 5 Mbps takes 1.6 s at 400*5 + 1000 = 3000 mW -> 4.8 J
    assert link.upload_joules(1_000_000) == pytest.approx(4.8)
    # 1 MB at 10 Mbps takes 0.8 s at 50*10 + 1000 = 1500 mW -> 1.2 J
    assert link.download_joules(1_000_000) == pytest.approx(1.2)
    assert link.upload_joules(0) == 0


def test_energy_is_proportional_to_bytes_so_savings_match_bandwidth():
    lte = energy.get_link("LTE")
    full, compressed = lte.upload_joules(4_800_000), lte.upload_joules(14_353)
    assert energy.saved_percent(full, compressed) == pytest.approx(100 * (1 - 14_353 / 4_800_000))


def test_links_are_configurable_and_checked():
    faster = energy.get_link("wifi").with_throughput(up_mbps=20.0)
    assert faster.up_mbps == 20.0 and faster.beta == energy.LINKS["wifi"].beta
    with pytest.raises(ValueError, match="unknown link"):
        energy.get_link("5g")
    with pytest.raises(ValueError, match="up_mbps"):
        energy.Link("bad", 1, 1, 1, up_mbps=0, down_mbps=1)
    with pytest.raises(ValueError):
        energy.get_link("lte").upload_joules(-1)


def tail_link():
    return energy.Link(
        "t", alpha_up=400.0, alpha_down=50.0, beta=1000.0, up_mbps=5.0, down_mbps=10.0,
        promotion_mw=1000.0, promotion_s=0.5, tail_mw=800.0, tail_s=10.0,
    )  # fmt: skip


def test_one_transfer_pays_promotion_and_a_full_tail():
    link = tail_link()
    round_ = link.round_joules(1_000_000, 0, train_seconds=3.0)
    # 1.2 J to receive (see above) + 0.5 s at 1 W + 10 s of tail at 0.8 W
    assert round_.download == pytest.approx(1.2) and round_.upload == 0
    assert round_.promotion == pytest.approx(0.5) and round_.tail == pytest.approx(8.0)
    assert round_.total == pytest.approx(9.7) and round_.transfer == pytest.approx(1.2)


def test_an_upload_inside_the_downloads_tail_needs_no_promotion():
    link = tail_link()
    within = link.round_joules(1_000_000, 1_000_000, train_seconds=3.0)
    # one promotion; the download's tail runs for the 3 s of training, then the upload's full tail
    assert within.promotion == pytest.approx(0.5)
    assert within.tail == pytest.approx(0.8 * (3.0 + 10.0))
    assert within.total == pytest.approx(1.2 + 4.8 + 0.5 + 10.4)
    after = link.round_joules(1_000_000, 1_000_000, train_seconds=30.0)
    # the tail ran out during training: two promotions, two full tails
    assert after.promotion == pytest.approx(1.0) and after.tail == pytest.approx(16.0)


def test_zero_bytes_do_not_wake_the_radio():
    link = tail_link()
    assert link.round_joules(0, 0, 5.0).total == 0
    assert link.round_joules(0, 14_000, 5.0).promotion == pytest.approx(0.5)
    with pytest.raises(ValueError):
        link.round_joules(1, 1, -1.0)


def test_on_lte_the_tail_dominates_a_compressed_round():
    lte = energy.get_link("lte")
    fedavg = lte.round_joules(4_800_000, 4_800_000, train_seconds=5.0)
    fedzip = lte.round_joules(4_800_000, 14_353, train_seconds=5.0)
    both = lte.round_joules(14_353, 14_353, train_seconds=5.0)
    assert energy.saved_percent(fedavg.transfer, fedzip.transfer) > 75  # bytes alone
    assert energy.saved_percent(fedavg.total, fedzip.total) < 60  # with promotion and tail
    assert both.tail > 10 * both.transfer  # what remains is the radio's tail
