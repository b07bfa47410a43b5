"""The one search for the largest size that fits: exact boundaries from any start, and it stops."""
import pytest

from ctxlab.search import largest_fitting, search


def test_largest_fitting_finds_the_boundary_and_stops():
    for boundary in (0, 1, 63, 64, 65, 1000, 4096):
        probes = []
        found = largest_fitting(lambda n: probes.append(n) or n <= boundary, 64)
        assert found == boundary // 64 * 64 and len(probes) < 40
    with pytest.raises(ValueError, match="limit"):
        largest_fitting(lambda n: True, 8, limit=1000)
    with pytest.raises(ValueError, match="granule"):
        largest_fitting(lambda n: True, 0)


@pytest.mark.parametrize("start", [16, 160, 1600, 16000, 33])
@pytest.mark.parametrize("factor", [1.1, 2.0])
def test_the_boundary_is_found_from_a_start_above_or_below_it(start, factor):
    for boundary in (0, 15, 16, 700, 1601, 9000):
        found = search(lambda n: n <= boundary, 16, start=start, factor=factor)
        assert found.largest == boundary // 16 * 16 and found.stopped_by == "failure"
        assert all(size % 16 == 0 for size, _, _ in found.probes)


def test_a_start_next_to_the_answer_needs_few_probes():
    """The ring budget starts each size from the previous one's answer, one granule a step."""
    found = search(lambda n: n <= 1000, 16, start=976, step=16)
    assert found.largest == 992 and [size for size, _, _ in found.probes] == [976, 992, 1008]
    found = search(lambda n: n <= 1000, 16, start=1040, step=16)
    assert found.largest == 992 and [size for size, _, _ in found.probes] == [1040, 1024, 1008, 992]


def test_tolerance_stops_the_bisection_early_and_stays_below_the_boundary():
    found = search(lambda n: n <= 10_000, 1, start=1000, tolerance=0.05)
    assert 10_000 * 0.95 <= found.largest <= 10_000
    assert len(found.probes) < len(search(lambda n: n <= 10_000, 1, start=1000).probes)


def test_the_limit_and_the_time_cap_stop_the_growth():
    found = search(lambda n: True, 64, start=64, limit=300)
    assert (found.largest, found.stopped_by) == (256, "limit") and max(s for s, _, _ in found.probes) <= 300

    def slow_past_512(n: int) -> bool:
        if n > 512:
            import time
            time.sleep(0.05)
        return True

    found = search(slow_past_512, 64, start=64, time_cap_s=0.02)
    assert (found.largest, found.stopped_by) == (1024, "time")  # the slow probe counted, none after it


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="factor"):
        search(lambda n: True, 8, factor=1.0)
    with pytest.raises(ValueError, match="tolerance"):
        search(lambda n: True, 8, tolerance=1.0)
    with pytest.raises(ValueError, match="limit"):
        search(lambda n: True, 8, limit=0)


@pytest.mark.parametrize("options", [{"factor": 4.0}, {"step": 64}, {"factor": 1.1}])
def test_shrinking_from_far_above_still_tries_one_granule(options):
    for boundary in (16, 20, 40, 100):
        found = search(lambda n: n <= boundary, 16, start=640, **options)
        assert found.largest == boundary // 16 * 16, (options, boundary)
    assert search(lambda n: False, 16, start=640, **options).largest == 0


def test_a_limit_below_one_granule_is_refused_and_resolution_coarsens_the_bracket():
    with pytest.raises(ValueError, match="limit"):
        search(lambda n: True, 64, limit=50)
    fine, coarse = (search(lambda n: n <= 10_000, 16, start=16, resolution=r) for r in (0, 1024))
    assert fine.largest == 10_000 // 16 * 16 and 10_000 - 1024 <= coarse.largest <= 10_000
    assert len(coarse.probes) < len(fine.probes)
