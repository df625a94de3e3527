"""Phone numbers read on signs: "+49 30 1234567" is a German number, whatever language the sign is in.

A number written with its country code (+49, or 0049 with the international prefix) names its country
reliably; where several countries share the code (+1: the US, Canada and the Caribbean; +44: the UK and
the Crown dependencies), the area code usually decides, and phonenumbers knows which. When it does not
(a toll-free +1 800 number, a number the library cannot place), every country sharing the code gets
likelihood 1: a +1 number is as likely on a sign in Barbados as in Ohio, and the posterior's prior,
not this clue, knows that far more photos are taken in the US.

A number without a country code is weak evidence. "030 1234567" is a valid number in 14 countries, and
10 random digits are valid somewhere nearly always (docs/evidence-research.md, section 5). So such a
number counts only if it is long (`MIN_NATIONAL_DIGITS`), written in groups, and its groups are the ones
the country itself writes ("030 1234567" as in Germany, "06 12 34 56 78" as in France, "(212) 555-0123"
as in the US): then it points to those few countries, with low strength (`NATIONAL_STRENGTH`).
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from geopin.evidence.base import Clue, Reading
from geopin.evidence.registry import register_source
from geopin.evidence.territories import countries_in_words, iso_countries, unique_clues

log = logging.getLogger(__name__)

#: A number without a country code needs at least this many digits to count (shorter ones are codes,
#: prices, dates and house numbers far more often than phone numbers, and valid almost everywhere).
MIN_NATIONAL_DIGITS = 9
#: How far to trust a number without a country code, even written exactly as a country writes it.
NATIONAL_STRENGTH = 0.3
#: How far to trust a +CC number that is possible (right length) but matches none of the code's plans.
UNPLACED_STRENGTH = 0.5
#: Likelihood left to the other countries sharing a code when the area code names one (a misread digit).
SHARED_CODE_OTHERS = 0.2

# "0049 30 ..." -> "+ 49 30 ...": the same length, so positions in the line stay valid for what was read.
# The country-code group must end in a separator: 00 followed by digits in one run is no prefix.
_IDD = re.compile(r"(?<![\w+])00(?=[1-9]\d{0,2}[\s\u00a0\-./(])")
# a run of digit groups that could be a national number: digits, spaces, - . / and parentheses
_NATIONAL = re.compile(r"(?<![\w+])\(?\d[\d\s\u00a0().\-/]{6,}\d(?![\w])")
_GROUP = re.compile(r"\d+")


@dataclass(frozen=True)
class PhoneMatch:
    """A phone number read in a line: what was read and the countries it points to."""

    read: str  # as read: "+49 30 1234567"
    countries: dict[str, float]
    country_code: int  # 0 for a number without a country code
    international: bool  # written with +CC or 00CC
    placed: bool  # the number is valid in the countries it points to (not just the right length)


def _regions_of_code(code: int) -> tuple[str, ...]:
    import phonenumbers

    known = set(iso_countries())
    return tuple(r for r in phonenumbers.region_codes_for_country_code(code) if r in known)


def find_international(text: str) -> list[PhoneMatch]:
    """Numbers written with a country code ("+49 30 1234567", "0049 30 1234567") in `text`."""
    import phonenumbers

    line = _IDD.sub("+ ", text)
    out = []
    for m in phonenumbers.PhoneNumberMatcher(line, None, leniency=phonenumbers.Leniency.POSSIBLE):
        number = m.number
        sharing = _regions_of_code(number.country_code)
        if not sharing:  # +800 freephone, +881 satellite: no country
            continue
        placed = [r for r in sharing if phonenumbers.is_valid_number_for_region(number, r)]
        if placed:
            countries = {r: SHARED_CODE_OTHERS for r in sharing}
            countries.update({r: 1.0 for r in placed})
        else:
            countries = {r: 1.0 for r in sharing}
        read = text[m.start:m.end].strip()
        out.append(PhoneMatch(read, countries, number.country_code, True, bool(placed)))
    return out


def _groups(text: str) -> tuple[int, ...]:
    """The lengths of the digit groups of a number: the way it is written, separators aside."""
    return tuple(len(g) for g in _GROUP.findall(text))


@functools.lru_cache(maxsize=1)
def _plans() -> tuple[tuple[str, str, frozenset[int]], ...]:
    """(region, national prefix, possible national lengths) per country: a cheap filter before parsing."""
    from phonenumbers.phonemetadata import PhoneMetadata

    out = []
    for region in iso_countries():
        meta = PhoneMetadata.metadata_for_region(region)
        if meta is None or meta.general_desc is None:
            continue
        out.append((region, meta.national_prefix or "", frozenset(meta.general_desc.possible_length or ())))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def national_regions(candidate: str) -> tuple[str, ...]:
    """Countries where `candidate` (no country code) is a valid number written in that country's own
    digit groups ("030 1234567": DE). Empty when short, unbroken or valid only in other groupings."""
    import phonenumbers

    digits = "".join(_GROUP.findall(candidate))
    groups = _groups(candidate)
    if len(digits) < MIN_NATIONAL_DIGITS or len(groups) < 2:
        return ()
    # where phonenumbers took the country from: the region assumed, or a leading code without + ("1-877-738-1234"
    # in the US); not an international prefix such as "00", which would make it an international number
    national_sources = (phonenumbers.CountryCodeSource.FROM_DEFAULT_COUNTRY, phonenumbers.CountryCodeSource.FROM_NUMBER_WITHOUT_PLUS_SIGN)
    out = []
    for region, prefix, lengths in _plans():
        n_national = len(digits) - (len(prefix) if prefix and digits.startswith(prefix) else 0)
        if lengths and len(digits) not in lengths and n_national not in lengths:
            continue
        try:
            number = phonenumbers.parse(candidate, region, keep_raw_input=True)
        except phonenumbers.NumberParseException:
            continue
        if number.country_code_source not in national_sources:
            continue  # it read an international prefix of this region: not a national number
        if not phonenumbers.is_valid_number_for_region(number, region):
            continue
        as_written_there = _groups(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
        # "1-877-738-1234": the US writes "(877) 738-1234"; a leading trunk prefix group may be left out
        trunk_first = bool(prefix) and groups[0] == len(prefix) and digits.startswith(prefix)
        if groups == as_written_there or (trunk_first and groups[1:] == as_written_there):
            out.append(region)
    return tuple(out)


def find_national(text: str) -> list[PhoneMatch]:
    """Numbers without a country code in `text` that are written exactly as some country writes them."""
    out = []
    for m in _NATIONAL.finditer(text):
        read = m.group(0).strip(" \u00a0.-/")
        regions = national_regions(read)
        if regions:
            out.append(PhoneMatch(read, {r: 1.0 for r in regions}, 0, False, True))
    return out


def find_numbers(text: str) -> list[PhoneMatch]:
    """Every phone number read in one line: with a country code first, then national ones elsewhere in the line."""
    international = find_international(text)
    rest = text
    for p in international:  # blank them out so their digits are not read again as national numbers
        rest = rest.replace(p.read, " " * len(p.read))
    return international + find_national(rest)


def _in_words(p: PhoneMatch) -> str:
    where = countries_in_words([cc for cc, v in p.countries.items() if v == 1.0])
    if not p.international:
        return f"{where} (a number without country code, written as there: weak)"
    if not p.placed:
        return f"{where} (+{p.country_code}, area not recognised)"
    return f"{where} (+{p.country_code})"


@register_source("phone")
class PhoneSource:
    """Phone numbers: +CC / 00CC numbers name their country; national-format numbers are weak hints."""

    def clues(self, reading: Reading) -> list[Clue]:
        out = []
        for line in reading.lines:
            if not any(ch.isdigit() for ch in line.text):
                continue
            for p in find_numbers(line.text):
                strength = 1.0 if p.international and p.placed else UNPLACED_STRENGTH if p.international else NATIONAL_STRENGTH
                out.append(Clue(self.name, p.read, _in_words(p), countries=p.countries, strength=strength))
        return unique_clues(out)


__all__ = ["PhoneSource", "PhoneMatch", "find_numbers", "find_international", "find_national", "national_regions"]
