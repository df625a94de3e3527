"""Web addresses and e-mails read on signs: "www.example.de" or "info@hotel.it" end in a country's domain.

The country-code top-level domain (ccTLD) is the last label of the host's public suffix, so "bbc.co.uk"
gives GB and "comune.praiano.sa.it" gives IT. The suffix is found with tldextract's bundled copy of the
public suffix list, never fetched (the default extractor downloads it). Generic domains (.com, .org,
.shop ...) say nothing about the place. A few ccTLDs are sold worldwide for their letters (.io, .tv, .me,
.co ...): they still count, barely (`VANITY_STRENGTH`). A few generic domains are national in practice
(.gov, .edu, .mil: the US) and some are a city's or region's (.berlin, .london, .cat).

OCR mangles web addresses; only a real host counts: dot-separated labels of letters, digits and hyphens
ending in a letters-only label. "www.", "http" or an "@" before it make it surer; a bare "word.it" in
running text is often a sentence missing its space, so it counts less, and a host whose last label is in
mixed case ("end.It") is not taken for one.
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

#: How far to trust a bare host ("hotel.it") against one with www., http or an e-mail's @ before it.
BARE_STRENGTH = 0.6
#: ccTLDs used worldwide for their letters rather than their country.
VANITY_TLDS = frozenset("io ai tv co me fm ly gg cc ws to nu tk ml ga cf gq sh ac vc la am dj gl st cx so im".split())
VANITY_STRENGTH = 0.15
#: A bare host ending in one of these is more likely a file name than a web address ("readme.md", "setup.py").
FILE_EXTENSIONS = frozenset("md py pl sh rs js ps ai mk so ml cs".split())
#: ccTLDs whose letters are not the ISO code of their country.
CCTLD_COUNTRY = {"uk": "GB", "su": "RU", "ac": "SH"}
#: The EU's domain (members and, since 2019, the EEA): weak, it spans 30 countries.
EU_COUNTRIES = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE IS LI NO".split()
)
#: Generic or sponsored domains that are, in practice, one country's, and city/region domains.
NATIONAL_GENERIC = {
    "gov": ("US", 0.8), "mil": ("US", 0.8), "edu": ("US", 0.5),
    "berlin": ("DE", 1.0), "bayern": ("DE", 1.0), "hamburg": ("DE", 1.0), "koeln": ("DE", 1.0), "cologne": ("DE", 1.0),
    "ruhr": ("DE", 1.0), "nrw": ("DE", 1.0), "saarland": ("DE", 1.0), "wien": ("AT", 1.0), "tirol": ("AT", 1.0),
    "swiss": ("CH", 1.0), "zuerich": ("CH", 1.0), "london": ("GB", 1.0), "scot": ("GB", 1.0), "wales": ("GB", 1.0),
    "cymru": ("GB", 1.0), "paris": ("FR", 1.0), "bzh": ("FR", 1.0), "alsace": ("FR", 1.0), "corsica": ("FR", 1.0),
    "cat": ("ES", 0.7), "eus": ("ES", 0.7), "gal": ("ES", 0.7), "madrid": ("ES", 1.0), "barcelona": ("ES", 1.0),
    "amsterdam": ("NL", 1.0), "frl": ("NL", 1.0), "brussels": ("BE", 1.0), "vlaanderen": ("BE", 1.0), "gent": ("BE", 1.0),
    "istanbul": ("TR", 1.0), "moscow": ("RU", 1.0), "москва": ("RU", 1.0), "tatar": ("RU", 1.0),
    "tokyo": ("JP", 1.0), "osaka": ("JP", 1.0), "kyoto": ("JP", 1.0), "nagoya": ("JP", 1.0), "yokohama": ("JP", 1.0),
    "okinawa": ("JP", 1.0), "nyc": ("US", 1.0), "miami": ("US", 1.0), "boston": ("US", 1.0), "quebec": ("CA", 1.0),
    "sydney": ("AU", 1.0), "melbourne": ("AU", 1.0), "rio": ("BR", 1.0), "capetown": ("ZA", 1.0),
    "durban": ("ZA", 1.0), "joburg": ("ZA", 1.0), "taipei": ("TW", 1.0),
}
#: Internationalised ccTLDs, written in their own script.
IDN_CCTLD = {
    "рф": "RU", "срб": "RS", "укр": "UA", "бел": "BY", "қаз": "KZ", "мкд": "MK", "мон": "MN", "бг": "BG",
    "ελ": "GR", "中国": "CN", "中國": "CN", "香港": "HK", "台湾": "TW", "台灣": "TW", "澳門": "MO", "新加坡": "SG",
    "한국": "KR", "ไทย": "TH", "հայ": "AM", "გე": "GE", "ලංකා": "LK", "இலங்கை": "LK", "இந்தியா": "IN", "भारत": "IN",
    "مصر": "EG", "السعودية": "SA", "امارات": "AE", "ایران": "IR", "الاردن": "JO", "المغرب": "MA", "قطر": "QA",
    "فلسطين": "PS", "تونس": "TN", "الجزائر": "DZ", "عمان": "OM", "پاکستان": "PK", "سودان": "SD", "سورية": "SY",
}

# A host with a letters-only last label in one script. Where the text around it runs on without spaces
# ("访问www.example.cn网站"), the all-ASCII form, delimited by ASCII only, still finds www.example.cn.
# A scheme or an e-mail's "@" before it is captured to judge how sure the match is.
_ASCII_HOST = r"(?<![A-Za-z0-9-])(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?P<tld>[A-Za-z]{2,24})(?![A-Za-z0-9-])"
_IDN_HOST = r"(?<![\w-])(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?P<idn>[A-Za-z]{2,24}|[^\W\d_A-Za-z]{2,24})(?![\w-])"
_HOST = re.compile(rf"(?P<lead>https?://|@)?(?P<host>{_IDN_HOST}|{_ASCII_HOST})(?!\.[^\W_])")


@dataclass(frozen=True)
class DomainMatch:
    """A host read in a line and where its domain points."""

    read: str  # "www.example.de", "info@hotel.it"
    suffix: str  # its public suffix: "de", "co.uk", "gov"
    tld: str  # the suffix's last label: "de", "uk", "gov"
    countries: dict[str, float]
    strength: float


@functools.lru_cache(maxsize=1)
def _extractor():
    """The offline extractor: the public suffix list shipped in the package, never fetched, no disk cache."""
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@functools.lru_cache(maxsize=4096)
def _split(host: str):
    """tldextract's reading of a host (subdomain, domain, public suffix); signs repeat their address."""
    return _extractor()(host)


def tld_countries(tld: str) -> tuple[dict[str, float], float]:
    """(likelihood per country, strength) a top-level domain gives; ({}, 0) for a generic one."""
    tld = tld.lower()
    if tld in IDN_CCTLD:
        return {IDN_CCTLD[tld]: 1.0}, 1.0
    if tld in NATIONAL_GENERIC:
        cc, strength = NATIONAL_GENERIC[tld]
        return {cc: 1.0}, strength
    if tld == "eu":
        return {cc: 1.0 for cc in EU_COUNTRIES}, 0.4
    if len(tld) != 2 or not tld.isascii():
        return {}, 0.0
    cc = CCTLD_COUNTRY.get(tld, tld.upper())
    if cc not in _known():
        return {}, 0.0
    return {cc: 1.0}, VANITY_STRENGTH if tld in VANITY_TLDS else 1.0


@functools.lru_cache(maxsize=1)
def _known() -> frozenset[str]:
    return frozenset(iso_countries())


#: No host name is longer than 253 characters (RFC 1035); longer runs without a space are not searched,
#: which also keeps the host pattern's backtracking bounded on long runs like "1.2.1.2...".
_MAX_TOKEN = 320


def find_domains(text: str) -> list[DomainMatch]:
    """Hosts and e-mail addresses in one line whose domain points to a country."""
    out = []
    for token in re.finditer(r"\S+", text):
        if len(token.group(0)) <= _MAX_TOKEN:
            out.extend(_domains_in(token.group(0)))
    return out


def _domains_in(text: str) -> list[DomainMatch]:
    out = []
    for m in _HOST.finditer(text):
        host, tld = m.group("host"), m.group("idn") or m.group("tld")
        if not (tld.islower() or host.isupper() or not any(ch.isascii() for ch in tld)):
            continue  # "end.It": a sentence without its space, not a host
        parts = _split(host.lower())
        suffix = parts.suffix
        if not suffix:
            continue  # not in the public suffix list: "a.b.c", "photo.jpg"
        last = suffix.rsplit(".", 1)[-1]
        countries, strength = tld_countries(last)
        if not countries:
            continue
        lead = m.group("lead") or ""
        www = bool(lead) or "www." in host.lower()
        if not www:
            if last in FILE_EXTENSIONS or len(parts.domain) < 2:
                continue
            strength *= BARE_STRENGTH
        start = m.start("host") if lead != "@" else _mail_start(text, m.start())
        read = text[start:m.end("host")]
        if "www." in read.lower():  # "Besuchen Siewww.example.de": what was read starts at www.
            read = read[read.lower().index("www."):]
        out.append(DomainMatch(read, suffix, last, countries, round(strength, 4)))
    return out


def _mail_start(text: str, at: int) -> int:
    """Where the e-mail address whose "@" is at `at` starts (its local part)."""
    start = at
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "._%+-"):
        start -= 1
    return start


def _in_words(d: DomainMatch) -> str:
    where = countries_in_words(d.countries)
    if d.tld in VANITY_TLDS:
        return f"{where} (.{d.suffix}, a domain also used worldwide: weak)"
    if d.tld == "eu":
        return f"a European Union country: {where} (.{d.suffix})"
    return f"{where} (.{d.suffix})"


@register_source("domain")
class DomainSource:
    """Country-code web domains (.de, .co.uk, .рф) in addresses and e-mails; generic ones (.com) say nothing."""

    def clues(self, reading: Reading) -> list[Clue]:
        out = []
        for line in reading.lines:
            if "." not in line.text:
                continue
            for d in find_domains(line.text):
                out.append(Clue(self.name, d.read, _in_words(d), countries=d.countries, strength=d.strength))
        return unique_clues(out)


__all__ = ["DomainSource", "DomainMatch", "find_domains", "tld_countries"]
