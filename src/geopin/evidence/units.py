"""Units on signs: "40 MPH", "½ mile" and "80 km/h" tell the imperial road world from the metric one.

Speed limits are posted in miles per hour only in the United States and the United Kingdom, their
territories and dependencies, and a few countries around them (`MPH_COUNTRIES`); the rest of the world
posts km/h. So "mph" points strongly to that short list, while "km/h" says little more than "probably
not there": every country gets likelihood 1 except the mph countries, which get `METRIC_IN_MPH_COUNTRY`.

US speed-limit signs print no unit ("SPEED LIMIT 40"): read alone, that points to the US.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from geopin.evidence.base import Clue, Reading
from geopin.evidence.registry import register_source
from geopin.evidence.territories import only_in, unique_clues

log = logging.getLogger(__name__)

# --- units -------------------------------------------------------------------------------------------

#: Where speed limits are posted in mph (1.0) or where that is in doubt (lower). The US and its territories,
#: the UK and its Crown dependencies and most overseas territories (Gibraltar and Bermuda post km/h), and
#: the Caribbean, Pacific and West African countries that kept mph. Myanmar's signs mix mph and km/h.
MPH_COUNTRIES: dict[str, float] = {
    "US": 1.0, "PR": 1.0, "GU": 1.0, "VI": 1.0, "AS": 1.0, "MP": 1.0, "UM": 1.0,
    "GB": 1.0, "IM": 1.0, "JE": 1.0, "GG": 1.0,
    "AI": 1.0, "VG": 1.0, "KY": 1.0, "MS": 1.0, "TC": 1.0, "FK": 1.0, "SH": 1.0,
    "AG": 1.0, "BS": 1.0, "BZ": 1.0, "DM": 1.0, "GD": 1.0, "KN": 1.0, "LC": 1.0, "VC": 1.0,
    "WS": 1.0, "FM": 1.0, "MH": 1.0, "PW": 1.0, "LR": 1.0,
    "MM": 0.5,
}
US_AND_TERRITORIES = ("US", "PR", "GU", "VI", "AS", "MP", "UM")
#: The likelihood a metric reading keeps in an mph country (a km/h sign there is rare: border areas,
#: dual-unit signs, imported goods).
METRIC_IN_MPH_COUNTRY = 0.2
#: The likelihood an mph reading keeps in a metric country (speedometers with both scales, tourist text).
MPH_ELSEWHERE = 0.05

_NUM = r"(?<![\w.,])(?:\d{1,3}(?:[.,]\d{1,2})?|\d{1,3}\s*[½¼¾]|[½¼¾]|\d/\d)"
_SEP = r"[\s\u00a0\u202f]*"


@dataclass(frozen=True)
class UnitKind:
    """One family of unit readings and what it says: likelihoods and how far to trust the match."""

    name: str  # "mph", "miles", "speed limit", "km/h", "km"
    pattern: re.Pattern
    imperial: bool
    strength: float


_KINDS: tuple[UnitKind, ...] = (
    # "40 MPH", "40mph", "20 m.p.h.", "30 miles per hour"; OCR often drops the space
    UnitKind("mph", re.compile(_NUM + _SEP + r"(?:m\.?\s?p\.?\s?h\b\.?|miles?\s*(?:per|an|/)\s*hour\b)", re.I), True, 1.0),
    # a lone MPH (the number read as a separate line)
    UnitKind("mph", re.compile(r"(?<![\w/])mph(?![\w/])", re.I), True, 0.7),
    # distances: "½ mile", "2 miles", "300 yds"; "Miles" alone is also a name, so a number must come first
    UnitKind("miles", re.compile(_NUM + _SEP + r"(?:miles?|mi\b\.?|yards?|yds?\b\.?)(?![\w/])", re.I), True, 0.6),
    # US speed-limit signs print no unit: "SPEED LIMIT 40" (5..85 in steps of 5), not followed by km/h
    UnitKind("speed limit", re.compile(r"speed\s*limit\s*[:\-]?\s*([1-8]?[05])(?!\s*\d)(?!\s*(?:km|k/?m/?h|kph))\b", re.I), True, 0.7),
    # "80 km/h", "50kmh", "30 kph", "60 км/ч", Norwegian/Danish "km/t", Dutch "km/u"
    UnitKind("km/h", re.compile(_NUM + _SEP + r"(?:k\.?m\.?\s*/\s*[htu]\b|km/?hr?\b|kph\b|км\s*/\s*ч|км/час)", re.I), False, 1.0),
    UnitKind("km/h", re.compile(r"(?<![\w/])(?:km/h|км/ч)(?![\w/])", re.I), False, 0.7),
    # "12 km", "3,5 km": distances in km are also printed in the US (races, trails), so weaker still
    UnitKind("km", re.compile(_NUM + _SEP + r"(?:kms?|км)(?![\w/])", re.I), False, 0.5),
)


def find_units(text: str) -> list[tuple[UnitKind, str]]:
    """Each kind of unit read in `text`, with the first text that matched it: [(kind, "40 MPH"), ...].

    A kind appears once even if read twice. "SPEED LIMIT 40 MPH" counts as mph only; "80 km/h" is not
    also "80 km" (the km pattern stops before a slash)."""
    found: dict[str, tuple[UnitKind, str]] = {}
    for kind in _KINDS:
        if kind.name in found:
            continue
        m = kind.pattern.search(text)
        if m:
            found[kind.name] = (kind, m.group(0).strip())
    if "mph" in found:
        found.pop("speed limit", None)
    return list(found.values())


def unit_likelihood(kind: UnitKind) -> dict[str, float]:
    """The likelihood per country a unit reading of this kind gives (see the module docstring).

    Distances (miles, km) are weaker than speeds: their "elsewhere" likelihood is twice as high."""
    if kind.imperial:
        if kind.name == "speed limit":  # the unit-less sign is a US design; other mph countries print less often
            return only_in({**{cc: 0.5 for cc in MPH_COUNTRIES}, **{cc: 1.0 for cc in US_AND_TERRITORIES}}, MPH_ELSEWHERE)
        return only_in(MPH_COUNTRIES, MPH_ELSEWHERE if kind.name == "mph" else 2 * MPH_ELSEWHERE)
    low = METRIC_IN_MPH_COUNTRY if kind.name == "km/h" else 2 * METRIC_IN_MPH_COUNTRY
    # 1 everywhere, `low` where mph is posted, in between where both are (Myanmar)
    return only_in({cc: 1.0 - (1.0 - low) * share for cc, share in MPH_COUNTRIES.items()}, 1.0)


def _in_words(kind: UnitKind) -> str:
    if kind.name == "speed limit":
        return "United States (a speed-limit sign without unit, as there)"
    if kind.imperial:
        return f"United States or United Kingdom (or another country signposting {'mph' if kind.name == 'mph' else 'miles'})"
    return "anywhere but the United States or United Kingdom (metric units)"


@register_source("units")
class UnitsSource:
    """Speed and distance units read on signs: mph/miles point to the US, the UK and a few others; km/h away from them."""

    def clues(self, reading: Reading) -> list[Clue]:
        out = []
        for line in reading.lines:
            for kind, read in find_units(line.text):
                out.append(Clue(self.name, read, _in_words(kind), countries=unit_likelihood(kind), strength=kind.strength))
        return unique_clues(out)


__all__ = ["UnitsSource", "find_units", "unit_likelihood", "MPH_COUNTRIES"]
