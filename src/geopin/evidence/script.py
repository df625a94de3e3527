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


#: Greek and Cyrillic letters that look like Latin ones: an OCR engine taught several scripts reads Latin signs
#: as these (THANK YOU -> ΤΗΑΝΚ YOU, TOK -> ток), so text made of them alone says nothing about its script.
_LATIN_LOOKALIKES = set("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧαβεικνορτυχΆΈΉΊΌΎ" "АВЕЗІЈКМНОРСТУХЅаеіјкморсухѕтпгиь")


def distinctive(text: str, script: str) -> bool:
    """Whether `text` shows letters of `script` that no Latin letter looks like, and no Latin letter itself.

    For Greek and Cyrillic readings of a photo: ΑΘΗΝΑ (Θ) and ВЛАДИВОСТОК (Л, Д, И) are distinctive; ΡΑΜ and
    'ΤΗΑΝΚ YOU' are Latin text read in the wrong script. Other scripts share no letters with Latin: always True.
    """
    if script not in ("Greek", "Cyrillic"):
        return True
    letters = [ch for ch in text if char_script(ch)]
    if any(char_script(ch) == "Latin" for ch in letters):
        return False
    return any(char_script(ch) == script and ch not in _LATIN_LOOKALIKES for ch in letters)


__all__ = ["char_script", "script_counts", "dominant_script", "distinctive"]
