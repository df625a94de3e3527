"""Town names read off the photo: PRAIANO on a sign is a clue the photo was taken near Praiano.

Each name found in a line (geopin.evidence.gazetteer: 147,000 towns of 1,000+ people, every spelling and
script GeoNames has) becomes one clue whose spots are all the towns of that name, weighted by population (a
sign reading SAN FRANCISCO is likelier in the city of 830,000 than in one of the 67 smaller ones).

How far to trust it, `strength`, is the common-word guard: is the text there because a town of that name is
near, or because it is an ordinary word that happens to name a town somewhere (PARK, HOT, GEORGE, ENTER)?
Bigger towns are named more often; commoner words are written more often. So the evidence is the margin

    margin = log10(population of the largest town of the name) - Zipf(word) + bonus

where Zipf is the word's wordfreq frequency (log10 per billion words, the highest in any of wordfreq's 42
languages) and the bonus is +1 for a name matched exactly in its own non-Latin script (ВЛАДИВОСТОК, 京都: a
Cyrillic or Han string equal to a town's name is rarely an accident; +0.5 when it is only a substring of
longer unspaced text, or Latin capitals read as Greek: AOHNA -> ΑΘΗΝΑ) and +0.5 per word beyond the first
(SAN FRANCISCO). Read as odds of name over word, 10**(margin - 1), strength = odds / (1 + odds), times the
OCR confidence of the line. A name with margin < MIN_MARGIN gives no clue.

Measured (docs/evidence-research.md): on 300 photos only 1 of 12 raw matches was right; the guard keeps
it (BANGKOK: margin 2.4, strength 0.96) and drops PARK (-1.8), HOT, BEER, ENTER, OSS. PRAIANO is also a
Portuguese word (Zipf 2.46): margin 0.86, strength 0.42. PARIS (Zipf 5.7 in French) gets 0.29, LONDON 0.83.
The weight of this source is fit out of fold; nothing here is fit.
"""

from __future__ import annotations

import logging

from geopin.evidence.base import Clue, Reading, Spot
from geopin.evidence.gazetteer import Match, default_gazetteer
from geopin.evidence.registry import register_source

log = logging.getLogger(__name__)

MIN_MARGIN = 0.5  # log10 odds of name over common word, +1 offset (strength 0.24): below it, no clue
MAX_SPOTS = 20  # a name shared by more towns keeps the most populous ones (the rest are named in points_to)
NATIVE_BONUS = 1.0  # exact match of a whole word in its own non-Latin script
PARTIAL_NATIVE_BONUS = 0.5  # a substring of unspaced text (京都 in 京都駅), or Latin capitals read as Greek
WORD_BONUS = 0.5  # per word beyond the first


def margin(match: Match, whole_word: bool = True) -> float:
    """log10(population) - Zipf + bonus: how much likelier the text is the town's name than a common word."""
    import math

    bonus = WORD_BONUS * max(0, match.words - 1)
    if match.native:
        bonus += PARTIAL_NATIVE_BONUS if (match.lookalike or not whole_word) else NATIVE_BONUS
    return math.log10(max(match.population, 1)) - match.zipf + bonus


def strength_of(m: float) -> float:
    """Odds 10**(m - 1) of name over word, as a probability in 0..1 (0.5 at the research guard m = 1)."""
    return 1.0 / (1.0 + 10.0 ** (1.0 - m))


def _whole_word(text: str, match: Match) -> bool:
    before = text[match.start - 1] if match.start > 0 else " "
    after = text[match.end] if match.end < len(text) else " "
    return not (before.isalnum() or after.isalnum())


def _spots(match: Match) -> tuple[Spot, ...]:
    towns = match.towns[:MAX_SPOTS]
    total = float(sum(max(t.population, 1) for t in towns))
    return tuple(Spot(t.lat, t.lon, max(t.population, 1) / total, t.name, t.country) for t in towns)


def _points_to(match: Match) -> str:
    from geopin.countries import country_name

    top = match.towns[0]
    where = f"{top.name}, {country_name(top.country) or top.country}"
    others = len(match.towns) - 1
    return where if not others else f"{where} and {others} other place{'s' if others > 1 else ''}"


def choose(text: str, matches: list[Match]) -> list[tuple[Match, float]]:
    """The names of one line worth a clue, with their margin: those passing the guard, longest first, never
    two that overlap (SAN FRANCISCO, not also SAN; 서울특별시, not also 서울)."""
    scored = [(m, margin(m, _whole_word(text, m))) for m in matches]
    scored = [(m, g) for m, g in scored if g >= MIN_MARGIN]
    scored.sort(key=lambda mg: (-(mg[0].end - mg[0].start), -mg[1], mg[0].start))
    taken: list[tuple[Match, float]] = []
    for m, g in scored:
        if all(m.end <= t.start or m.start >= t.end for t, _ in taken):
            taken.append((m, g))
    return sorted(taken, key=lambda mg: mg[0].start)


@register_source("placename")
class PlaceNames:
    """One clue per distinct town name read on the photo (see the module docstring for its strength)."""

    name = "placename"

    def clues(self, reading: Reading) -> list[Clue]:
        best: dict[str, tuple[float, Match]] = {}  # key -> (strength, match): a name on two lines counts once
        if not reading.lines:
            return []
        gazetteer = default_gazetteer()
        for line in reading.lines:
            for match, g in choose(line.text, gazetteer.lookup(line.text)):
                strength = strength_of(g) * min(max(float(line.score), 0.0), 1.0)
                if match.key not in best or strength > best[match.key][0]:
                    best[match.key] = (strength, match)
        out = [Clue(source=self.name, read=m.read, points_to=_points_to(m), spots=_spots(m), strength=round(s, 4))
               for s, m in best.values() if round(s, 4) > 0]
        if out:
            log.debug("place names on %r: %s", reading.text[:80], ", ".join(f"{c.read}->{c.points_to}" for c in out))
        return out


__all__ = ["MIN_MARGIN", "PlaceNames", "choose", "margin", "strength_of"]
