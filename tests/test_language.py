"""The language source: scripts through CLDR, Latin text through lingua (real models, no OCR)."""

from __future__ import annotations

import pytest

from geopin.evidence.base import Reading, TextLine
from geopin.evidence.language import (
    LanguageEvidence,
    language_countries,
    script_countries,
)
from geopin.evidence.registry import create_sources


def reading(*texts: str) -> Reading:
    return Reading(lines=tuple(TextLine(t, 0.99, (0, 0, 10, 10)) for t in texts))


@pytest.fixture(scope="module")
def source() -> LanguageEvidence:
    return LanguageEvidence()


def only_clue(source, *texts):
    clues = source.clues(reading(*texts))
    assert len(clues) == 1, [c.to_dict() for c in clues]
    clue = clues[0]
    assert clue.source == "language" and not clue.spots
    assert max(clue.countries.values()) == pytest.approx(1.0)
    return clue


def top(clue, n=1):
    return [cc for cc, _ in sorted(clue.countries.items(), key=lambda kv: -kv[1])[:n]]


@pytest.mark.parametrize(
    "text, cc, script",
    [("ВЛАДИВОСТОК", "RU", "Cyrillic"), ("ΑΘΗΝΑ", "GR", "Greek"), ("서울특별시", "KR", "Hangul"),
     ("とうきょうタワー", "JP", "Japanese"), ("กรุงเทพมหานคร", "TH", "Thai"), ("תל אביב", "IL", "Hebrew")],
)
def test_script_points_to_its_countries(source, text, cc, script):
    clue = only_clue(source, text)
    assert top(clue) == [cc]
    assert clue.read.startswith(f"{script} script") and clue.strength == 1.0


def test_han_alone_is_chinese_or_japanese(source):
    clue = only_clue(source, "京都")
    assert set(top(clue, 2)) == {"CN", "JP"}


def test_italian_sentence(source):
    clue = only_clue(source, "Vietato fumare in questo locale")
    assert top(clue) == ["IT"]
    assert clue.read == "Italian text: 'Vietato fumare in questo locale'"
    assert clue.points_to == "Italy"
    assert 0.5 <= clue.strength <= 1.0


def test_english_is_weak_and_gives_way(source):
    mixed = only_clue(source, "Shakespeare's Globe Exhibition", "Vietato fumare in questo locale")
    assert top(mixed) == ["IT"] and "English" not in mixed.read
    alone = source.clues(reading("Shakespeare's Globe Exhibition"))
    assert all(c.strength <= 0.3 for c in alone)


def test_short_latin_gives_no_clue(source):
    assert source.clues(reading("VIA ROMA")) == []
    assert source.clues(reading("PRAIANO")) == []


def test_nothing_read(source):
    assert source.clues(Reading()) == []
    assert source.clues(reading("", "123 456", "!!")) == []


def test_cldr_tables():
    assert script_countries("Latin") == {}
    assert script_countries("Cyrillic")["RU"] == 1.0 and "UA" in script_countries("Cyrillic")
    de = language_countries("de")
    assert de["DE"] == 1.0 and de["AT"] > de.get("NL", 0.0)  # official in AT, a second language in NL
    assert language_countries("xx") == {}


def test_registered():
    (src,) = create_sources(["language"])
    assert isinstance(src, LanguageEvidence)
