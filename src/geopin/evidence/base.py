"""The one interface every evidence source implements, and the clue it returns.

A source reads what the photo shows (today: the text OCR found on it) and returns clues. A clue is a
likelihood over places in one of two forms:
  * `countries`: how strongly it points to each country (ISO code -> 0..1; countries not named get 0),
    e.g. a +49 phone number, Cyrillic script, 'mph';
  * `spots`: named points (a town whose name was read), each with a weight among the spots.
A source that finds nothing returns no clue, and the answer is then exactly the one without it. How
much a clue may move the posterior is not decided here: each source's weight is fit out of fold on
held-out photographers (geopin.locate.posterior.fit_clue_weights), and a clue's `strength` only
scales it (e.g. a town name that is also a common word).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class TextLine:
    """One line of text read off a photo."""

    text: str
    score: float  # the OCR engine's confidence, 0..1
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the photo's own pixels
    engine: str = "rapidocr"  # which engine read it ("rapidocr", "tesseract")
    script: str = ""  # dominant Unicode script of its letters: "Latin", "Cyrillic", "Greek", "Han", ...

    def to_dict(self) -> dict:
        return {**asdict(self), "box": list(self.box)}

    @classmethod
    def from_dict(cls, d: dict) -> "TextLine":
        return cls(str(d["text"]), float(d["score"]), tuple(float(v) for v in d["box"]), str(d.get("engine", "")), str(d.get("script", "")))


@dataclass(frozen=True)
class Reading:
    """Everything read off one photo, shared by all text sources (OCR runs once per photo)."""

    lines: tuple[TextLine, ...] = ()
    width: int = 0  # the size of the photo the text was read from
    height: int = 0

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def to_dict(self) -> dict:
        return {"lines": [line.to_dict() for line in self.lines], "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict) -> "Reading":
        return cls(tuple(TextLine.from_dict(x) for x in d.get("lines", ())), int(d.get("width", 0)), int(d.get("height", 0)))


@dataclass(frozen=True)
class Spot:
    """A point a clue names, e.g. the town whose name was read."""

    lat: float
    lon: float
    weight: float  # share among the clue's spots (the clue's spots sum to 1)
    name: str  # "Praiano"
    country: str  # ISO 3166-1 alpha-2, '' at sea or unknown


@dataclass(frozen=True)
class Clue:
    """What one source concluded from one thing it read."""

    source: str  # the registry name of the source, e.g. "placename"
    read: str  # what was read, as read: "PRAIANO", "+49 30 1234567"
    points_to: str  # the conclusion in words: "Praiano, Italy", "Germany"
    countries: dict[str, float] = field(default_factory=dict)  # ISO code -> likelihood in 0..1
    spots: tuple[Spot, ...] = ()
    strength: float = 1.0  # 0..1, scales the source's fit weight (a name that is also a common word: less)

    def __post_init__(self) -> None:
        if bool(self.countries) == bool(self.spots):
            raise ValueError(f"clue {self.source}:{self.read!r}: give countries or spots, exactly one of them")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"clue {self.source}:{self.read!r}: strength {self.strength} is outside 0..1")

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "read": self.read,
            "points_to": self.points_to,
            "countries": dict(self.countries),
            "spots": [asdict(s) for s in self.spots],
            "strength": self.strength,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Clue":
        return cls(
            str(d["source"]),
            str(d["read"]),
            str(d["points_to"]),
            {str(k): float(v) for k, v in (d.get("countries") or {}).items()},
            tuple(Spot(float(s["lat"]), float(s["lon"]), float(s["weight"]), str(s["name"]), str(s["country"])) for s in d.get("spots") or ()),
            float(d.get("strength", 1.0)),
        )


@runtime_checkable
class Source(Protocol):
    """An evidence source: one file in geopin/evidence/, registered in geopin.evidence.registry."""

    name: str

    def clues(self, reading: Reading) -> list[Clue]:
        """Clues from what was read off one photo; [] when the source finds nothing."""
        ...


__all__ = ["TextLine", "Reading", "Spot", "Clue", "Source"]
