"""Dates written on signs, tickets and receipts: "12/31/2024" is American, "31.12.2024" German or Russian,
"2024年12月31日" East Asian.

How each country writes a date in figures comes from CLDR (babel): the short and medium date patterns of
its locales (units.territory_locales: the main locale and those of its official languages). A pattern
gives a style: the order of day, month and year, and the separator ("dd.MM.y": day first, dots;
"M/d/yy": month first, slashes; "y/MM/dd": year first, slashes). Patterns with 年/月/日 or 년/월/일 give
the East Asian styles.

Only dates whose order can be read count: a first number above 12 is a day (31/12/2024: day first), a
second number above 12 is a day (12/31/2024: month first); 05/06/2024 could be either and is skipped.
Years must have four digits (19xx or 20xx): "24.12.31" could be read three ways. A country writing the
style read gets likelihood 1, one writing the same order with another separator `SAME_ORDER`, any other
`OTHER_ORDER`. "2024-12-31" is the ISO form that computers print everywhere, so it counts little.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from geopin.evidence.base import Clue, Reading
from geopin.evidence.registry import register_source
from geopin.evidence.territories import countries_in_words, iso_countries, territory_locales, unique_clues

log = logging.getLogger(__name__)

SAME_ORDER = 0.3  # the right order with another separator ("31/12/2024" read in Germany)
OTHER_ORDER = 0.05  # the other order ("31.12.2024" read in the US)
ISO_ELSEWHERE = 0.5  # "2024-12-31" where the country's own style is different: ISO dates are printed everywhere
ISO_STRENGTH = 0.4
CJK = ("年", "년")  # the East Asian styles' "separators"

_YEAR = r"(?:19|20)\d\d"
_SEP = r"(?P<sep>\.\s?|/|-)"
_DAY_MONTH_YEAR = re.compile(rf"(?<![\d.,/-])(?P<a>\d{{1,2}}){_SEP}(?P<b>\d{{1,2}})(?P=sep)(?P<y>{_YEAR})(?![\d]|[.,/-]\d)")
_YEAR_MONTH_DAY = re.compile(rf"(?<![\d.,/-])(?P<y>{_YEAR}){_SEP}(?P<m>\d{{1,2}})(?P=sep)(?P<d>\d{{1,2}})\.?(?![\d]|[.,/-]\d)")
_CJK_DATE = re.compile(rf"(?P<y>{_YEAR})\s*(?P<sep>[年년])\s*(?P<m>\d{{1,2}})\s*[月월]\s*(?P<d>\d{{1,2}})\s*[日일]")


@dataclass(frozen=True)
class DateStyle:
    """How a date is written in figures: the order of its fields and the separator between them."""

    order: str  # "DMY", "MDY", "YMD"
    sep: str  # ".", "/", "-", or "年" / "년" for the East Asian forms


def pattern_style(pattern: str) -> DateStyle | None:
    """The style of a CLDR date pattern ("dd.MM.y" -> DMY "."), None if it spells out the month or a weekday."""
    bare = re.sub(r"'[^']*'", "", pattern)  # quoted literals ('de', 'г')
    if "年" in bare or "년" in bare:
        return DateStyle("YMD", "年" if "年" in bare else "년")
    fields = re.findall(r"([A-Za-z])\1*", bare)
    if not fields or any(f not in "dMy" for f in fields) or re.search(r"M{3,}", bare):
        return None
    order = "".join({"d": "D", "M": "M", "y": "Y"}[f] for f in fields)
    if sorted(order) != ["D", "M", "Y"]:
        return None
    between = re.search(r"[dMy]+([^dMy]+)[dMy]", bare)
    sep = re.sub(r"[\s\u200e\u200f\u061c]", "", between.group(1)) if between else ""
    if sep not in (".", "/", "-"):
        return None
    return DateStyle(order, sep)


@functools.lru_cache(maxsize=1)
def country_styles() -> dict[str, frozenset[DateStyle]]:
    """Country -> the date styles its locales write (CLDR short, medium and long patterns). Built once."""
    from babel import Locale
    from babel.dates import get_date_format

    out: dict[str, frozenset[DateStyle]] = {}
    for cc in iso_countries():
        styles = set()
        for ident in territory_locales(cc):
            locale = Locale.parse(ident)
            for width in ("short", "medium", "long"):
                style = pattern_style(get_date_format(width, locale).pattern)
                if style is not None:
                    styles.add(style)
        out[cc] = frozenset(styles)
    return out


@dataclass(frozen=True)
class DateMatch:
    """A date read in a line and the style it is written in."""

    read: str
    style: DateStyle


def _valid(day: int, month: int) -> bool:
    return 1 <= month <= 12 and 1 <= day <= 31


def find_dates(text: str) -> list[DateMatch]:
    """Dates in one line whose style can be told: the order of day and month must be readable."""
    if not any(ch.isdigit() for ch in text):
        return []
    out = []
    for m in _CJK_DATE.finditer(text):
        if _valid(int(m.group("d")), int(m.group("m"))):
            out.append(DateMatch(m.group(0), DateStyle("YMD", m.group("sep"))))
    for m in _YEAR_MONTH_DAY.finditer(text):
        if _valid(int(m.group("d")), int(m.group("m"))):
            out.append(DateMatch(m.group(0).rstrip("."), DateStyle("YMD", m.group("sep").strip())))
    for m in _DAY_MONTH_YEAR.finditer(text):
        a, b = int(m.group("a")), int(m.group("b"))
        if a > 12 and _valid(a, b):
            order = "DMY"
        elif b > 12 and _valid(b, a):
            order = "MDY"
        else:
            continue  # 05/06/2024: either order, or no date at all
        out.append(DateMatch(m.group(0), DateStyle(order, m.group("sep").strip())))
    return out


def style_likelihood(style: DateStyle) -> dict[str, float]:
    """Likelihood per country of a date written in `style` (see the module docstring)."""
    iso = style == DateStyle("YMD", "-")
    out = {}
    for cc, styles in country_styles().items():
        if style in styles:
            out[cc] = 1.0
        elif iso:
            out[cc] = ISO_ELSEWHERE
        elif any(s.order == style.order for s in styles):
            out[cc] = SAME_ORDER
        else:
            out[cc] = OTHER_ORDER
    return out


def _style_words(style: DateStyle) -> str:
    if style.sep in CJK:
        return f"year {style.sep} month day"
    first = {"D": "day", "M": "month", "Y": "year"}
    name = {".": "dots", "/": "slashes", "-": "dashes"}[style.sep]
    return f"{first[style.order[0]]} first, {name}"


@register_source("date_format")
class DateFormatSource:
    """Dates in figures whose day/month order can be read: the countries writing dates that way (CLDR)."""

    def clues(self, reading: Reading) -> list[Clue]:
        out = []
        for line in reading.lines:
            for d in find_dates(line.text):
                likelihood = style_likelihood(d.style)
                writers = [cc for cc, v in likelihood.items() if v == 1.0]
                if not writers:
                    continue
                strength = ISO_STRENGTH if d.style == DateStyle("YMD", "-") else 1.0
                words = f"{countries_in_words(writers)} ({_style_words(d.style)})"
                out.append(Clue(self.name, d.read, words, countries=likelihood, strength=strength))
        return unique_clues(out)


__all__ = ["DateFormatSource", "DateStyle", "DateMatch", "find_dates", "pattern_style", "country_styles", "style_likelihood"]
