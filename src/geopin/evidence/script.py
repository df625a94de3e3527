"""Which writing system a text is in, from the Unicode names of its letters.

The script is the strongest language signal on a short sign (language identifiers are unreliable on two
words; Cyrillic or Hangul is not), so it is read here once and stored with each line.
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter

#: Unicode name prefixes -> script, checked in order (first match wins).
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("LATIN", "Latin"),
    ("CYRILLIC", "Cyrillic"),
    ("GREEK", "Greek"),
    ("CJK UNIFIED IDEOGRAPH", "Han"),
    ("CJK COMPATIBILITY IDEOGRAPH", "Han"),
    ("HIRAGANA", "Hiragana"),
    ("KATAKANA", "Katakana"),
    ("HALFWIDTH KATAKANA", "Katakana"),
    ("HANGUL", "Hangul"),
    ("ARABIC", "Arabic"),
    ("HEBREW", "Hebrew"),
    ("THAI", "Thai"),
    ("DEVANAGARI", "Devanagari"),
    ("BENGALI", "Bengali"),
    ("GURMUKHI", "Gurmukhi"),
    ("GUJARATI", "Gujarati"),
    ("TAMIL", "Tamil"),
    ("TELUGU", "Telugu"),
    ("KANNADA", "Kannada"),
    ("MALAYALAM", "Malayalam"),
    ("SINHALA", "Sinhala"),
    ("GEORGIAN", "Georgian"),
    ("ARMENIAN", "Armenian"),
    ("ETHIOPIC", "Ethiopic"),
    ("KHMER", "Khmer"),
    ("LAO", "Lao"),
    ("MYANMAR", "Myanmar"),
    ("TIBETAN", "Tibetan"),
    ("MONGOLIAN", "Mongolian"),
)


@functools.lru_cache(maxsize=65536)
def char_script(ch: str) -> str:
    """The script of one character, '' for digits, punctuation, symbols and anything unnamed."""
    if not ch.isalpha():
        return ""
    name = unicodedata.name(ch, "")
    for prefix, script in _PREFIXES:
        if name.startswith(prefix):
            return script
    return ""


def script_counts(text: str) -> Counter:
    """Letters per script in `text` (characters of no script are not counted)."""
    return Counter(s for s in map(char_script, text) if s)


def dominant_script(text: str) -> str:
    """The script most of the letters are in; Hiragana or Katakana anywhere makes it 'Japanese' (kana never
    appear outside Japanese, while Han alone is Chinese or Japanese); '' when there are no letters."""
    counts = script_counts(text)
    if not counts:
        return ""
    if counts.get("Hiragana") or counts.get("Katakana"):
        return "Japanese"
    return counts.most_common(1)[0][0]


__all__ = ["char_script", "script_counts", "dominant_script"]
