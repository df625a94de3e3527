"""One answer per photo from the sources' candidates: time, GPX tracks and the visual model."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """What one source proposes for one photo: a position, a radius, and the calibrated probability
    that the truth lies within that radius."""

    source: str  # "time", "gpx" or "visual"
    lat: float
    lon: float
    radius_km: float
    confidence: float
    detail: dict = field(default_factory=dict)  # source-specific words, e.g. the references and gap used


#: The sources in the order their answers are preferred when they are equally precise: a GPS track is a
#: measurement, an interpolation between the library's own photos nearly one, the visual model a guess.
SOURCE_ORDER = ("gpx", "time", "visual")
#: A candidate counts as an answer in the race for the smallest disc only when its truth is more likely in than out
CONFIDENT = 0.5
#: Two agreeing answers are named together when the wider disc is at most this many times the narrower
PEER_RATIO = 10.0


@dataclass(frozen=True)
class Proposal:
    """The answer for one photo without GPS: a position with its radius and confidence, or the reason why none."""

    rel: str
    lat: float | None = None
    lon: float | None = None
    radius_km: float | None = None
    confidence: float | None = None
    source: str = ""  # "time", "gpx", "visual", or a combination such as "gpx+time", "time+visual"
    reason: str = ""  # why the photo is left unplaced ("" when placed)
    detail: dict = field(default_factory=dict)

    @property
    def placed(self) -> bool:
        return self.lat is not None and self.lon is not None


def _agree(a: Candidate, b: Candidate) -> bool:
    """Whether two candidates can both be right: their discs overlap."""
    from geopin.geo import haversine_km

    return float(haversine_km(a.lat, a.lon, b.lat, b.lon)) <= a.radius_km + b.radius_km


def combine(rel: str, candidates: dict[str, Candidate], reason_if_none: str = "no_candidate") -> Proposal:
    """Merge one photo's candidates (by source) into one answer.

    The most precise measurement wins: a GPX fix or a time interpolation (radius of metres to a few km)
    beats any visual guess (tens of km at best). Sources that agree (overlapping discs) are named together;
    the confidence stays the chosen candidate's own calibrated one, which agreement can only make
    conservative. A visual guess inside a time disc that is wider than itself narrows it ("time+visual"):
    the model's own calibrated mass is kept as the confidence. A source that agrees only as a much wider
    disc is kept in the detail ("other_sources", with "agrees"), not in the name.
    """
    present = [candidates[s] for s in SOURCE_ORDER if candidates.get(s) is not None]
    if not present:
        return Proposal(rel, reason=reason_if_none)
    # the smallest disc among the candidates that more likely than not hold the truth (else the surest one)
    pool = [c for c in present if c.confidence >= CONFIDENT] or [max(present, key=lambda c: c.confidence)]
    best = min(pool, key=lambda c: (c.radius_km, SOURCE_ORDER.index(c.source)))
    agreeing = [c for c in present if c is not best and _agree(best, c)]
    # named in the answer: the sources that agree at a comparable precision (a GPX fix and an interpolation);
    # a 200 km visual disc around a 100 m interpolation confirms it, but did not place the photo
    peers = [c for c in agreeing if c.radius_km <= PEER_RATIO * best.radius_km]
    names = sorted({best.source, *(c.source for c in peers)}, key=SOURCE_ORDER.index)
    others = {c.source: {"lat": c.lat, "lon": c.lon, "radius_km": c.radius_km, "confidence": c.confidence,
                         "agrees": c in agreeing} for c in present if c is not best}
    detail = {"chosen": best.source, **best.detail}
    if others:
        detail["other_sources"] = others
    return Proposal(rel, lat=best.lat, lon=best.lon, radius_km=best.radius_km, confidence=best.confidence,
                    source="+".join(names), detail=detail)
