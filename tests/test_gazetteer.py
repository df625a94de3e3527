"""The gazetteer: name keys (fold) and lookups against the real GeoNames index (built once into the user cache)."""

from __future__ import annotations

import time
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopin.evidence.gazetteer import (
    Gazetteer,
    default_gazetteer,
    fold,
    index_path,
    script_fold,
)

# Latin letters with and without accents, Greek and Cyrillic letters, digits, spaces and punctuation.
_LETTERS = st.characters(
    min_codepoint=0x20, max_codepoint=0x4FF,
    whitelist_categories=("Lu", "Ll", "Nd", "Zs", "Po", "Pd"),
)
_LATIN = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzàáâãäåçèéêëìíîïñòóôõöùúûüýÿāăąćčďēęěğīıłńňōőřśşšţťūůűźżž '-.,0123456789"))


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return default_gazetteer()


def test_fold_examples():
    assert fold("Αθήνα") == "athina"
    assert fold("Sant'Agata  de' Goti") == "sant agata de goti"
    assert fold("  MÜNCHEN ") == fold("München") == "munchen"
    assert fold("ВЛАДИВОСТОК") == "vladivostok"
    assert fold("Straße") == "strasse"
    assert fold("！？…") == ""


def test_script_fold_keeps_the_script():
    assert script_fold("ΑΘΉΝΑ") == "αθηνα"
    assert script_fold("京都市") == "京都市"
    assert script_fold("Йошкар-Ола") == script_fold("йошкар ола")
    assert script_fold("がっこう") == "がっこう"  # kana voicing marks are letters, not accents


def test_fold_refuses_what_is_not_text():
    with pytest.raises(TypeError, match="fold"):
        fold(None)  # type: ignore[arg-type]


@given(st.text(_LETTERS, max_size=30))
def test_fold_is_idempotent(text):
    assert fold(fold(text)) == fold(text)
    assert script_fold(script_fold(text)) == script_fold(text)


@given(st.text(_LETTERS, max_size=30))
def test_fold_ignores_case(text):
    assert fold(text.upper()) == fold(text) == fold(text.lower())


@given(st.text(_LATIN, max_size=30))
def test_fold_ignores_accents(text):
    stripped = "".join(ch for ch in unicodedata.normalize("NFD", text) if not unicodedata.combining(ch))
    assert fold(stripped) == fold(text)


def test_index_is_cached_and_loads_fast(gazetteer):
    assert index_path().exists()
    t0 = time.perf_counter()
    again = Gazetteer.load()
    seconds = time.perf_counter() - t0
    assert len(again) == len(gazetteer) > 140_000
    assert seconds < 5.0, f"loading the cached gazetteer took {seconds:.2f} s (target < 1 s): is it rebuilt every time?"


def test_small_town_by_its_own_name(gazetteer):
    (match,) = [m for m in gazetteer.lookup("Benvenuti a PRAIANO") if m.read == "PRAIANO"]
    town = match.towns[0]
    assert (town.name, town.country) == ("Praiano", "IT")
    assert town.lat == pytest.approx(40.61, abs=0.01) and town.lon == pytest.approx(14.52, abs=0.01)
    assert (match.start, match.end) == (12, 19)


def test_names_in_their_own_scripts(gazetteer):
    for text, name, cc in (("ВЛАДИВОСТОК", "Vladivostok", "RU"), ("ΑΘΗΝΑ", "Athens", "GR"), ("京都", "Kyoto", "JP")):
        (match,) = gazetteer.lookup(text)
        assert match.native and (match.towns[0].name, match.towns[0].country) == (name, cc), text


def test_multi_word_names_and_cjk_substrings(gazetteer):
    reads = {m.read: m for m in gazetteer.lookup("SAN FRANCISCO")}
    assert reads["SAN FRANCISCO"].towns[0].country == "US" and reads["SAN FRANCISCO"].words == 2
    assert "京都" in {m.read for m in gazetteer.lookup("京都駅")}
    assert "서울" in {m.read for m in gazetteer.lookup("서울특별시")}


def test_greek_capitals_read_as_latin(gazetteer):
    (match,) = gazetteer.lookup("AOHNA")  # RapidOCR's reading of ΑΘΗΝΑ
    assert match.lookalike and match.towns[0].name == "Athens"
    assert {t.country for t in match.towns} <= {"GR", "CY"}


def test_latin_text_does_not_match_transliterations(gazetteer):
    assert not [m for m in gazetteer.lookup("JINGDOU") if m.towns[0].name == "Kyoto"]  # anyascii of 京都


def test_short_alternate_names_are_not_matched(gazetteer):
    assert not [m for m in gazetteer.lookup("ATH") if m.towns[0].name == "Athens"]  # an airport code


def test_nothing_read_nothing_found(gazetteer):
    assert gazetteer.lookup("") == []
    assert gazetteer.lookup("1234 !!") == []
    with pytest.raises(TypeError, match="lookup"):
        gazetteer.lookup(b"PRAIANO")  # type: ignore[arg-type]
