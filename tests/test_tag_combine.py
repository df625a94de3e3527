"""The merge of one photo's candidates: pure, so checked as properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from geopin.library.combine import CONFIDENT, SOURCE_ORDER, Candidate, combine

candidates = st.builds(
    Candidate,
    source=st.sampled_from(SOURCE_ORDER),
    lat=st.floats(-89, 89),
    lon=st.floats(-179, 179),
    radius_km=st.floats(0.01, 3000),
    confidence=st.floats(0, 1),
)


@given(st.lists(candidates, max_size=3, unique_by=lambda c: c.source))
def test_the_answer_is_one_candidate_and_the_surest_pool_wins(cands):
    by_source = {c.source: c for c in cands}
    prop = combine("a.jpg", by_source, reason_if_none="no_time")
    if not cands:
        assert not prop.placed and prop.reason == "no_time"
        return
    chosen = by_source[prop.detail["chosen"]]
    assert (prop.lat, prop.lon, prop.radius_km, prop.confidence) == (chosen.lat, chosen.lon, chosen.radius_km, chosen.confidence)
    assert chosen.source in prop.source.split("+")
    confident = [c for c in cands if c.confidence >= CONFIDENT]
    if confident:  # the narrowest disc among the candidates that more likely than not hold the truth
        assert chosen.confidence >= CONFIDENT
        assert chosen.radius_km == min(c.radius_km for c in confident)
    else:
        assert chosen.confidence == max(c.confidence for c in cands)


def test_a_time_interpolation_beats_the_visual_guess_and_a_wide_agreeing_disc_is_not_named():
    time = Candidate("time", 48.8566, 2.3522, 0.2, 0.9)
    visual = Candidate("visual", 48.9, 2.4, 200.0, 0.6)
    prop = combine("a.jpg", {"visual": visual, "time": time})
    assert prop.source == "time" and prop.lat == time.lat
    assert prop.detail["other_sources"]["visual"]["agrees"] is True


def test_gpx_and_time_that_agree_are_named_together():
    gpx = Candidate("gpx", 48.8566, 2.3522, 0.05, 0.95)
    time = Candidate("time", 48.8570, 2.3525, 0.2, 0.9)
    prop = combine("a.jpg", {"gpx": gpx, "time": time})
    assert prop.source == "gpx+time" and prop.lat == gpx.lat
    far = Candidate("time", 45.0, 5.0, 0.2, 0.9)  # disagrees: not named, but kept in the detail
    prop = combine("a.jpg", {"gpx": gpx, "time": far})
    assert prop.source == "gpx" and prop.detail["other_sources"]["time"]["agrees"] is False
