"""The place-name source on Readings built by hand (no OCR), against the real gazetteer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopin.evidence.base import Reading, TextLine
from geopin.evidence.placenames import PlaceNames, strength_of
from geopin.evidence.registry import create_sources


def reading(*texts: str, score: float = 0.99) -> Reading:
    return Reading(lines=tuple(TextLine(t, score, (0, 0, 10, 10)) for t in texts))


@pytest.fixture(scope="module")
def source() -> PlaceNames:
    return PlaceNames()


def only_clue(source, *texts):
    clues = source.clues(reading(*texts))
    assert len(clues) == 1, [c.to_dict() for c in clues]
    clue = clues[0]
    assert clue.source == "placename" and not clue.countries
    assert sum(s.weight for s in clue.spots) == pytest.approx(1.0)
    return clue


def test_praiano(source):
    clue = only_clue(source, "PRAIANO")
    top = max(clue.spots, key=lambda s: s.weight)
    assert (top.name, top.country) == ("Praiano", "IT")
    assert top.lat == pytest.approx(40.61, abs=0.01) and top.lon == pytest.approx(14.52, abs=0.01)
    assert clue.points_to == "Praiano, Italy" and clue.read == "PRAIANO"
    assert 0.3 < clue.strength <= 1.0


@pytest.mark.parametrize(
    "text, name, cc",
    [("ВЛАДИВОСТОК", "Vladivostok", "RU"), ("ΑΘΗΝΑ", "Athens", "GR"), ("京都", "Kyoto", "JP"),
     ("AOHNA", "Athens", "GR"), ("BANGKOK", "Bangkok", "TH")],
)
def test_names_in_any_script(source, text, name, cc):
    clue = only_clue(source, text)
    top = max(clue.spots, key=lambda s: s.weight)
    assert (top.name, top.country) == (name, cc)
    assert clue.points_to.startswith(f"{top.name}, ")


def test_multi_word_name_is_one_clue(source):
    clue = only_clue(source, "SAN FRANCISCO")
    top = max(clue.spots, key=lambda s: s.weight)
    assert top.country == "US" and clue.read == "SAN FRANCISCO"
    assert "other places" in clue.points_to


def test_name_inside_a_longer_line(source):
    clue = only_clue(source, "Hotel Le Sirene, Via Gennaro Capriglione, Praiano")
    assert clue.read == "Praiano"


@pytest.mark.parametrize("text", ["HOTEL", "PARK", "STOP", "CAR PARK AT REAR", "GEORGE", "ENTER", "BEER", "DO NOT ENTER"])
def test_common_words_give_no_strong_clue(source, text):
    assert all(c.strength < 0.1 for c in source.clues(reading(text)))


def test_the_same_name_twice_is_one_clue(source):
    clue = only_clue(source, "PRAIANO", "praiano")
    assert clue.points_to == "Praiano, Italy"


def test_an_uncertain_reading_is_a_weaker_clue(source):
    sure = source.clues(reading("PRAIANO", score=1.0))[0].strength
    unsure = source.clues(reading("PRAIANO", score=0.5))[0].strength
    assert unsure == pytest.approx(sure / 2, rel=1e-3)


def test_nothing_read(source):
    assert source.clues(Reading()) == []
    assert source.clues(reading("", "  ", "1234")) == []


@given(st.floats(-5, 10), st.floats(0, 3))
def test_strength_grows_with_the_margin(m, step):
    assert 0.0 <= strength_of(m) <= strength_of(m + step) <= 1.0


def test_registered():
    (src,) = create_sources(["placename"])
    assert isinstance(src, PlaceNames)
