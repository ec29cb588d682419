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
