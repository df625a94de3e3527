"""The everyday cues (phone numbers, web domains, units, currency, date formats): each reading of a sign
points where it should, near misses point nowhere, and no text can break them."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopin.evidence.base import Clue, Reading, TextLine
from geopin.evidence.currency import find_prices, symbol_currencies
from geopin.evidence.dates import DateStyle, country_styles, pattern_style
from geopin.evidence.phones import national_regions
from geopin.evidence.registry import create_sources, source_names
from geopin.evidence.territories import countries_in_words, iso_countries

CUES = ("currency", "date_format", "domain", "phone", "units")


def reading(*texts: str) -> Reading:
    return Reading(lines=tuple(TextLine(t, 0.99, (0, 0, 10, 10)) for t in texts))


@pytest.fixture(scope="module")
def sources():
    """The five sources, their CLDR tables built once for the module (a few seconds)."""
    made = {s.name: s for s in create_sources(CUES)}
    country_styles(), symbol_currencies()
    return made


def clues_of(sources, name: str, *texts: str) -> list[Clue]:
    return sources[name].clues(reading(*texts))


def top(clue: Clue) -> set[str]:
    best = max(clue.countries.values())
    return {cc for cc, v in clue.countries.items() if v == best}


def test_the_five_sources_are_registered():
    assert set(CUES) <= set(source_names())


# --- phone numbers


def test_a_number_with_country_code_names_its_country(sources):
    for text in ("+49 30 1234567", "Tel. 0049 30 1234567", "Tel +49 (0)30 1234567"):
        (clue,) = clues_of(sources, "phone", text)
        assert top(clue) == {"DE"} and clue.strength == 1.0 and "Germany" in clue.points_to
        assert clue.read in text and clue.read.endswith("1234567")


def test_a_shared_country_code_is_placed_by_its_area_code(sources):
    (ottawa,) = clues_of(sources, "phone", "+1 613 555 0123")
    assert top(ottawa) == {"CA"} and 0 < ottawa.countries["US"] < 1
    (toll_free,) = clues_of(sources, "phone", "+1 800 555 0199")  # valid in the whole +1 plan: no area
    assert {"US", "CA", "JM"} <= top(toll_free) and toll_free.points_to.startswith("United States, Canada")


def test_a_number_without_country_code_is_weak_and_must_look_national(sources):
    (berlin,) = clues_of(sources, "phone", "Tel. 030 1234567")
    assert "DE" in top(berlin) and berlin.strength <= 0.3 and "weak" in berlin.points_to
    (new_york,) = clues_of(sources, "phone", "(212) 555-0123")
    assert top(new_york) == {"US"}
    # valid in many countries but unbroken, or too short: not taken for a phone number
    assert clues_of(sources, "phone", "0301234567", "089 8741", "31.12.2024", "Zimmer 1234") == []
    assert national_regions("030 1234567") == national_regions("030 1234567")  # cached, same answer


# --- web domains


def test_country_domains(sources):
    (de,) = clues_of(sources, "domain", "www.example.de")
    assert top(de) == {"DE"} and de.read == "www.example.de" and de.strength == 1.0
    (it,) = clues_of(sources, "domain", "info@hotel.it")
    assert top(it) == {"IT"} and it.read == "info@hotel.it"
    (uk,) = clues_of(sources, "domain", "bbc.co.uk")
    assert top(uk) == {"GB"} and uk.strength < 1.0  # a bare host: less sure than www. or an e-mail
    (cn,) = clues_of(sources, "domain", "欢迎访问www.example.cn网站")
    assert top(cn) == {"CN"} and cn.read == "www.example.cn"


def test_generic_domains_and_lookalikes_give_nothing(sources):
    assert clues_of(sources, "domain", "example.com", "AXA.COM", "www.example.org", "Booking.com") == []
    assert clues_of(sources, "domain", "the end.It was", "readme.md", "e.g. i.e.", "www. example. de", "3.50") == []
    (io,) = clues_of(sources, "domain", "www.startup.io")
    assert io.strength < 0.3 and "worldwide" in io.points_to


# --- units


def test_mph_points_to_the_us_and_uk(sources):
    for text in ("40 MPH", "SPEED LIMIT 40 MPH", "30mph"):
        (clue,) = clues_of(sources, "units", text)
        assert {"US", "GB"} <= top(clue) and clue.countries["DE"] < 0.1 and clue.countries["JP"] < 0.1
    (sign,) = clues_of(sources, "units", "SPEED LIMIT 40")  # the US sign prints no unit
    assert "US" in top(sign) and sign.countries["US"] > sign.countries["GB"] > sign.countries["FR"]


def test_km_per_hour_points_away_from_the_us(sources):
    (clue,) = clues_of(sources, "units", "80 km/h")
    assert clue.countries["US"] <= 0.2 and clue.countries["GB"] <= 0.2
    assert clue.countries["DE"] == clue.countries["BR"] == 1.0 and len(clue.countries) == len(iso_countries())
    assert clues_of(sources, "units", "Miles Davis", "KM", "Kilometerstand") == []


# --- currency


def test_euro_prices(sources):
    for text in ("€ 3,50", "3,50 €", "3,50\u00a0€"):
        (clue,) = clues_of(sources, "currency", text)
        assert all(clue.countries.get(cc) == 1.0 for cc in ("DE", "IT", "FR")) and "US" not in clue.countries
        assert clue.read == text.strip()


def test_symbols_and_codes(sources):
    cases = {"¥500": {"JP", "CN"}, "500円": {"JP"}, "₩ 10,000": {"KR"}, "₽ 300": {"RU"}, "₹ 120": {"IN"},
             "12,50 zł": {"PL"}, "129 Kč": {"CZ"}, "CHF 12.50": {"CH", "LI"}, "1.200 Ft": {"HU"}}
    for text, expected in cases.items():
        (clue,) = clues_of(sources, "currency", text)
        assert expected <= top(clue) and set(clue.countries) <= expected | {"BT"}, text  # ₹: Bhutan pays in rupees too
    (kr,) = clues_of(sources, "currency", "45 kr")
    assert {"SE", "NO", "DK", "IS"} <= set(kr.countries)
    (dollar,) = clues_of(sources, "currency", "$5.99")
    assert {"US", "CA", "AU", "MX"} <= set(dollar.countries) and dollar.strength <= 0.3


def test_currency_lookalikes_give_nothing(sources):
    assert clues_of(sources, "currency", "Loft 5", "TOP 10", "ALL 50% OFF", "5 KM", "10 FT", "€", "CHF") == []
    assert find_prices("R 50 K 2") == []  # single letters are not read as rand or kyat


# --- date formats


def test_cldr_patterns_give_styles():
    assert pattern_style("dd.MM.yy") == DateStyle("DMY", ".")
    assert pattern_style("M/d/yy") == DateStyle("MDY", "/")
    assert pattern_style("y. MM. dd.") == DateStyle("YMD", ".")
    assert pattern_style("d\u200f/M\u200f/y") == DateStyle("DMY", "/")
    assert pattern_style("y年M月d日") == DateStyle("YMD", "年")
    assert pattern_style("d MMM y") is None and pattern_style("EEEE, d. MMMM y") is None
    styles = country_styles()
    assert DateStyle("MDY", "/") in styles["US"] and DateStyle("DMY", ".") in styles["DE"]


def test_dates_whose_order_can_be_read(sources):
    (us,) = clues_of(sources, "date_format", "12/31/2024")
    assert "US" in top(us) and us.countries["DE"] < 0.1
    (de,) = clues_of(sources, "date_format", "31.12.2024")
    assert de.countries["DE"] == 1.0 and de.countries["US"] <= 0.05
    (jp,) = clues_of(sources, "date_format", "2024年12月31日")
    assert {"JP", "CN", "TW"} <= top(jp) and jp.countries["US"] < 0.1
    (iso,) = clues_of(sources, "date_format", "2024-12-31")
    assert iso.strength < 0.5 and min(iso.countries.values()) >= 0.5  # printed everywhere: a faint hint
    # either order, a two-digit year, no date at all
    assert clues_of(sources, "date_format", "05/06/2024", "31.12.24", "13.13.2024", "1.2.3.2024") == []


# --- all five on any text


def test_text_without_cues_gives_nothing(sources):
    plain = reading("PRAIANO", "Hotel Bellevue", "Open 9-18", "Room 12", "DANGER KEEP OUT", "Version 2.0.1", "")
    assert [c for s in sources.values() for c in s.clues(plain)] == []
    assert countries_in_words(["GB", "US"]) == "United States or United Kingdom"


def _check(clues: list[Clue], text: str) -> None:
    for clue in clues:
        assert clue.countries and not clue.spots
        assert all(0.0 <= v <= 1.0 for v in clue.countries.values()) and max(clue.countries.values()) == 1.0
        assert set(clue.countries) <= set(iso_countries())
        assert 0.0 < clue.strength <= 1.0 and clue.points_to and clue.read
        assert clue.read in text  # what was read is text that was there


_CUE_CHARS = "+0123456789 .,-/:()@€$£¥₩kmhMPHwdeitukrFtCHz年月日년월일 "
_FAST = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FAST
@given(st.lists(st.text(max_size=80), max_size=4))
def test_any_text_gives_well_formed_clues(sources, lines):
    r = reading(*lines)
    for s in sources.values():
        _check(s.clues(r), r.text)


@_FAST
@given(st.lists(st.text(alphabet=_CUE_CHARS, max_size=60), max_size=4))
def test_cue_shaped_noise_gives_well_formed_clues(sources, lines):
    r = reading(*lines)
    for s in sources.values():
        _check(s.clues(r), r.text)


@_FAST
@given(st.lists(st.text(alphabet="0123456789", min_size=1, max_size=40), min_size=1, max_size=4))
def test_digit_noise_is_never_certain(sources, lines):
    r = reading(*lines)
    assert [c for s in sources.values() for c in s.clues(r) if c.strength == 1.0] == []


@_FAST
@given(st.lists(st.text(alphabet="0123456789 ", min_size=1, max_size=40), min_size=1, max_size=4))
def test_digits_and_spaces_are_certain_only_as_international_numbers(sources, lines):
    r = reading(*lines)
    for clue in (c for s in sources.values() for c in s.clues(r)):
        assert clue.strength < 1.0 or (clue.source == "phone" and clue.read.startswith("00")), clue
