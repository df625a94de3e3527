"""Prices read on signs and menus: "€ 3,50", "£5", "1.200 Ft", "¥500", "CHF 12.50" name a currency, and a
currency names the few countries that pay with it.

Which countries use which currency comes from CLDR (babel): every currency a country has used as legal
tender since `SINCE_YEAR` (photos are years old: a "kn" price is Croatia before the euro), and how each
country writes it, in its own locales (the symbol "$" is the US dollar in en_US and the peso in es_MX).
The English locale adds the prefixed dollars (A$, NZ$, HK$). A few words written on price tags that
CLDR does not list as symbols are added by hand (`PRICE_WORDS`: 円, 元, 원, руб, TL, Fr. ...).

A symbol counts only next to a number, and symbols that are also everyday letters or units are left
out: single letters (R, K, L, P, Q), two capitals (SR is also a state route, FC a football club) and KM
(kilometres). "$" alone is shared by 54 countries: its clue is kept but weak (`DOLLAR_STRENGTH`).
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from geopin.evidence.base import Clue, Reading
from geopin.evidence.registry import register_source
from geopin.evidence.territories import by_population, countries_in_words, iso_countries, territory_locales, unique_clues

log = logging.getLogger(__name__)

#: Currencies in use as tender on or after 1 January of this year count (photos are often 10-20 years old).
SINCE_YEAR = 2000
DOLLAR_STRENGTH = 0.3  # "$": 27 currencies in 54 countries
LETTERS_STRENGTH = 0.6  # symbols written in Latin letters ("kr", "Ft", "Rp"): fragments of words read by OCR look alike
CODE_STRENGTH = 0.8  # ISO codes ("CHF 12.50"): some are also words or acronyms
#: Written on price tags but not CLDR symbols: word -> ISO currency codes.
PRICE_WORDS: dict[str, tuple[str, ...]] = {
    "円": ("JPY",), "元": ("CNY",), "圆": ("CNY",), "원": ("KRW",), "руб": ("RUB",), "грн": ("UAH",),
    "лв": ("BGN",), "дин": ("RSD",), "din": ("RSD",), "lei": ("RON", "MDL"), "Lei": ("RON", "MDL"),
    "TL": ("TRY",), "Fr": ("CHF",), "SFr": ("CHF",), "Rs": ("INR", "NPR", "PKR", "LKR", "MUR"),
    "S$": ("SGD",), "NZ$": ("NZD",), "kn": ("HRK",), "Kčs": ("CZK",),
}
#: ISO codes that are also English words or common acronyms: not read as currencies.
CODE_WORDS = frozenset("ALL TOP CUP PEN MAD SOS GEL BOB MOP TRY BAM AMD LAK MRO MRU ERN SAR".split())
_SPACE = "[ \u00a0\u202f]?"


def _clean(symbol: str) -> str:
    """A symbol as it would be matched: no bidi marks, ordinary spaces, no trailing dot ("kr." is "kr")."""
    symbol = re.sub("[\u200e\u200f\u061c\u200b]", "", symbol).replace("\u00a0", " ").replace("\u202f", " ")
    return symbol.strip().rstrip(".").strip()


def _usable(symbol: str, code: str) -> bool:
    """Whether a CLDR symbol is safe to look for next to numbers (see the module docstring)."""
    if not symbol or symbol == code:
        return False
    if symbol.isascii() and symbol.isalpha() and (len(symbol) == 1 or (len(symbol) == 2 and symbol.isupper() and symbol != "RM")):
        return False
    return symbol not in ("KM", "КМ")


@functools.lru_cache(maxsize=1)
def currency_countries() -> dict[str, frozenset[str]]:
    """ISO currency code -> the countries that have used it as legal tender since SINCE_YEAR (CLDR)."""
    from babel.core import get_global

    known = set(iso_countries())
    out: dict[str, set[str]] = {}
    for cc, used in get_global("territory_currencies").items():
        if cc not in known:
            continue
        for code, _start, end, tender in used:
            if tender and (end is None or end[0] >= SINCE_YEAR):
                out.setdefault(code, set()).add(cc)
    return {code: frozenset(ccs) for code, ccs in out.items()}


@functools.lru_cache(maxsize=1)
def symbol_currencies() -> dict[str, frozenset[str]]:
    """Symbol as written -> ISO currency codes: each country's own locales for its currencies, English for
    every currency, plus PRICE_WORDS. Built once (it loads about 330 CLDR locales, ~1 s)."""
    from babel import Locale
    from babel.numbers import get_currency_symbol

    by_country: dict[str, list[str]] = {}
    for code, ccs in currency_countries().items():
        for cc in ccs:
            by_country.setdefault(cc, []).append(code)
    out: dict[str, set[str]] = {}

    def add(symbol: str, code: str) -> None:
        symbol = _clean(symbol)
        if _usable(symbol, code):
            out.setdefault(symbol, set()).add(code)

    for cc, codes in by_country.items():
        for ident in territory_locales(cc):
            locale = Locale.parse(ident)
            for code in codes:
                add(get_currency_symbol(code, locale), code)
    english = Locale.parse("en")
    for code in currency_countries():
        add(get_currency_symbol(code, english), code)
    for word, codes in PRICE_WORDS.items():
        for code in codes:
            if code in currency_countries():
                out.setdefault(word, set()).add(code)
    return {symbol: frozenset(codes) for symbol, codes in out.items()}


@functools.lru_cache(maxsize=1)
def _patterns() -> tuple[re.Pattern, re.Pattern]:
    """(symbol next to a number, ISO code next to a number); longest symbols first so "US$" beats "$"."""
    symbols = sorted(symbol_currencies(), key=lambda s: (-len(s), s))
    alt = "|".join(re.escape(s).replace("\\ ", _SPACE) for s in symbols)
    # not inside a word: a letter symbol must not touch other letters ("Ft" in "Loft 5" is no forint)
    symbol = re.compile(rf"(?<![^\W\d_])(?P<pre>{alt})\.?{_SPACE}\d|\d{_SPACE}(?P<post>{alt})(?![^\W\d_])")
    codes = "|".join(sorted(c for c in currency_countries() if c not in CODE_WORDS))
    code = re.compile(rf"(?<![A-Za-z])(?P<pre>{codes}){_SPACE}\d|\d{_SPACE}(?P<post>{codes})(?![A-Za-z])")
    return symbol, code


@dataclass(frozen=True)
class CurrencyMatch:
    """A price read in a line: the symbol or code, the currencies it may be, and their countries."""

    read: str  # the price as read: "€ 3,50"
    symbol: str  # "€", "kr", "CHF"
    currencies: tuple[str, ...]  # ISO codes, sorted
    countries: frozenset[str]
    strength: float


_NUMBER = re.compile(r"\d[\d.,'\u00a0\u202f ]*\d|\d")


def _price_text(text: str, m: re.Match) -> str:
    """The symbol with the number it stands next to: what was read, for the clue."""
    if m.group("pre"):
        num = _NUMBER.match(text, m.end() - 1)
        return text[m.start("pre"):num.end() if num else m.end()].strip()
    start = m.start("post")
    while start > 0 and (text[start - 1].isdigit() or text[start - 1] in ".,' \u00a0\u202f"):
        start -= 1
    return text[start:m.end("post")].strip(" \u00a0\u202f.,'")


def find_prices(text: str) -> list[CurrencyMatch]:
    """Currency symbols and ISO codes standing next to a number in one line."""
    if not any(ch.isdigit() for ch in text):
        return []
    symbol_re, code_re = _patterns()
    out = []
    for pattern, is_code in ((symbol_re, False), (code_re, True)):
        for m in pattern.finditer(text):
            symbol = m.group("pre") or m.group("post")
            currencies = (symbol,) if is_code else tuple(sorted(symbol_currencies()[_clean(symbol)]))
            countries = frozenset().union(*(currency_countries().get(c, frozenset()) for c in currencies))
            if not countries:
                continue
            if is_code:
                strength = CODE_STRENGTH
            elif _clean(symbol) == "$":
                strength = DOLLAR_STRENGTH
            elif _clean(symbol).replace(".", "").isascii() and _clean(symbol).replace(".", "").isalpha():
                strength = LETTERS_STRENGTH
            else:
                strength = 1.0
            out.append(CurrencyMatch(_price_text(text, m), _clean(symbol), currencies, countries, strength))
    return out


def _currency_names(codes: tuple[str, ...]) -> str:
    """Currencies in words ("Euro", "Swedish Krona, Danish Krone or 3 other currencies"), most populous countries' first."""
    from babel.numbers import get_currency_name

    rank = {cc: i for i, cc in enumerate(by_population(iso_countries()))}
    first = sorted(codes, key=lambda c: min((rank.get(cc, len(rank)) for cc in currency_countries().get(c, ())), default=len(rank)))
    names = [get_currency_name(c, locale="en") for c in first]
    return ", ".join(names) if len(names) <= 2 else f"{', '.join(names[:2])} or {len(names) - 2} other currencies"


@register_source("currency")
class CurrencySource:
    """Currency symbols and codes next to numbers ("€ 3,50", "1.200 Ft", "CHF 12"): the countries paying with them."""

    def clues(self, reading: Reading) -> list[Clue]:
        out = []
        for line in reading.lines:
            for p in find_prices(line.text):
                words = f"{countries_in_words(p.countries)} ({p.symbol}: {_currency_names(p.currencies)})"
                out.append(Clue(self.name, p.read, words, countries={cc: 1.0 for cc in sorted(p.countries)}, strength=p.strength))
        return unique_clues(out)


__all__ = ["CurrencySource", "CurrencyMatch", "find_prices", "currency_countries", "symbol_currencies"]
