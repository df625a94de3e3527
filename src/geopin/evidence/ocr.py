"""The OCR reader: every line of text on a photo, as a Reading shared by all text sources.

Two engines, chosen by what each does well (measurements: docs/evidence-research.md section 1):
  * RapidOCR 3.10.0 with the models in its wheel finds text boxes in every script and reads Latin, Chinese and
    Japanese; it returns nothing for Cyrillic, Hangul and Arabic and reads Greek capitals as Latin lookalikes.
    Only its default config works offline (any other language downloads a model), so nothing but the thread
    count and the log level is changed.
  * Tesseract (tesserocr, optional) re-reads each box RapidOCR found, including boxes whose recognition failed,
    with the non-Latin script models. It is never run on the whole photo: there it reads noise (0.3% of photos
    had real text), while on a clean crop it reads every script we tried. When the two readings differ both are
    kept (TextLine.engine says which), and the sources decide (a gazetteer knows ВЛАДИВОСТОК, not ВЛАДИВ0СТ0К).

    reader = TextReader(OcrConfig())
    reading = reader.read("photo.jpg")   # Reading(lines=(TextLine("PRAIANO", 0.99, ...),), width=..., height=...)
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from geopin.dataset.images import ImageError, decode_rgb
from geopin.evidence.base import Reading, TextLine
from geopin.evidence.script import char_script, dominant_script

log = logging.getLogger(__name__)

TESSERACT_MODES = ("auto", "never", "always")
#: Tesseract script models for what RapidOCR cannot read; those installed are loaded in one PyTessBaseAPI.
TESSERACT_SCRIPTS = ("Cyrillic", "Greek", "Japanese", "Hangul", "Arabic", "Thai")
_DEBIAN_SCRIPT_PACKAGES = {"Cyrillic": "cyrl", "Greek": "grek", "Japanese": "jpan", "Hangul": "hang", "Arabic": "arab",
                           "Thai": "thai"}
#: Where Debian (and most Linux distributions) put the traineddata files; TESSDATA_PREFIX wins.
TESSDATA_DIRS = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata",
                 "/usr/share/tessdata", "/usr/local/share/tessdata")
#: Scripts whose characters are whole syllables or words: two of them make a word.
DENSE_SCRIPTS = frozenset({"Han", "Japanese", "Hangul"})
_RAPIDOCR_LOGGER = "RapidOCR"
# px: tesseract reads best with letters 20-30 px high, and a box is about twice its letters' height; of 40, 48,
# 64 and 80 px, 40 read the most of 7 rendered non-Latin signs at 1200 and 384 px (11 of 14)
_CROP_HEIGHT = 40
_CROP_BORDER = 10  # px of background added around a crop: tesseract misreads glyphs touching the edge
_EDGE_MARKS = "|[]{}!"  # what the edge of a sign reads as, stripped from the ends of tesseract's words


class OcrUnavailable(RuntimeError):
    """An OCR engine the config asks for cannot be loaded; the message names the engine and the fix."""


@dataclass(frozen=True)
class OcrConfig:
    """How text is read off photos; the one place its defaults live."""

    min_score: float = 0.8  # a line below this confidence is dropped (rapidocr's score, tesseract's mean conf / 100)
    min_alnum: int = 3  # letters or digits a line needs (fewer is a fragment: 'A', '12')
    min_alnum_dense: int = 2  # the same for Han, Japanese and Hangul lines (京都 is a word)
    tesseract: str = "auto"  # "auto": use it when installed; "never"; "always": an error when it is missing
    threads: int = 1  # onnxruntime intra-op threads (and tesseract's OpenMP): a second never helped on 2 cores
    # Photos are downscaled to this long side before reading (None: read at full size). rapidocr caps its
    # detector at 2000 px anyway; 12 MP photos decode and read at full size in about 3 s, so no cap by default.
    max_long_side: int | None = None

    def __post_init__(self) -> None:
        if self.tesseract not in TESSERACT_MODES:
            raise ValueError(f"unknown tesseract mode {self.tesseract!r}; choose one of {', '.join(TESSERACT_MODES)}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in 0..1, got {self.min_score}")
        for name in ("min_alnum", "min_alnum_dense", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_long_side is not None and self.max_long_side < 32:
            raise ValueError(f"max_long_side must be at least 32 px (or None), got {self.max_long_side}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def keep_line(text: str, score: float, cfg: OcrConfig) -> bool:
    """A line worth passing on: confident enough and long enough to be a word rather than a fragment."""
    if score < cfg.min_score:
        return False
    alnum = sum(ch.isalnum() for ch in text)
    return alnum >= (cfg.min_alnum_dense if dominant_script(text) in DENSE_SCRIPTS else cfg.min_alnum)


def find_tessdata() -> Path | None:
    """The folder with tesseract's traineddata files: $TESSDATA_PREFIX when set (as tesseract itself does),
    else the first of the usual system folders that has any."""
    prefix = os.environ.get("TESSDATA_PREFIX")
    for folder in [prefix] if prefix else TESSDATA_DIRS:
        path = Path(folder)
        if path.is_dir() and any(path.glob("*.traineddata")):
            return path
    return None


def _load_rapidocr(threads: int):
    """RapidOCR with its bundled models, `threads` intra-op threads, and its own console logging kept quiet."""
    # Its colorlog handler prints every INFO to stderr and does not propagate; WARNING would still print
    # "The text detection result is empty" for every photo without text, so only its errors get through.
    logging.getLogger(_RAPIDOCR_LOGGER).setLevel(logging.ERROR)
    try:
        from rapidocr import RapidOCR
    except ImportError as exc:
        raise OcrUnavailable(f"the OCR engine rapidocr cannot be imported ({exc}): pip install rapidocr==3.10.0 "
                             f"onnxruntime") from None
    try:
        import onnxruntime  # noqa: F401 - rapidocr does not declare it, and fails late without it
    except ImportError as exc:
        raise OcrUnavailable(f"the OCR engine rapidocr needs onnxruntime, which cannot be imported ({exc}): "
                             f"pip install onnxruntime") from None
    params = {
        "Global.log_level": "error",
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    }
    try:
        engine = RapidOCR(params=params)
        # load the three models now, so a broken install fails here and not on the first photo
        engine._load_det_model(), engine._load_cls_model(), engine._load_rec_model()
    except Exception as exc:  # noqa: BLE001 - whatever rapidocr raises, the user needs the engine and the fix
        raise OcrUnavailable(f"the OCR engine rapidocr failed to load its bundled models: {type(exc).__name__}: "
                             f"{exc} (reinstall: pip install --force-reinstall rapidocr==3.10.0 onnxruntime)") from None
    logging.getLogger(_RAPIDOCR_LOGGER).setLevel(logging.ERROR)  # RapidOCR() set it from its config again
    return engine


_tesseract_absent_logged = False


def tesseract_problem() -> str | None:
    """Why tesseract cannot be used here (with the fix), or None when tesserocr and a script model are installed."""
    try:
        import tesserocr  # noqa: F401
    except ImportError as exc:
        return f"tesserocr cannot be imported ({exc}): pip install 'geopin[tesseract]'"
    tessdata = find_tessdata()
    packages = "apt-get install tesseract-ocr " + " ".join(f"tesseract-ocr-script-{_DEBIAN_SCRIPT_PACKAGES[s]}" for s in TESSERACT_SCRIPTS)
    if tessdata is None:
        return f"no tesseract traineddata in $TESSDATA_PREFIX or {', '.join(TESSDATA_DIRS)}: {packages}"
    if not tesseract_scripts(tessdata):
        return f"{tessdata} has none of the script models {', '.join(TESSERACT_SCRIPTS)}: {packages}"
    return None


def tesseract_scripts(tessdata: Path) -> list[str]:
    """The models of TESSERACT_SCRIPTS installed in `tessdata`."""
    return [s for s in TESSERACT_SCRIPTS if (tessdata / f"{s}.traineddata").is_file()]


def _load_tesseract(mode: str, threads: int):
    """A PyTessBaseAPI with the installed script models, single-line mode; None when absent and mode is 'auto'."""
    global _tesseract_absent_logged
    if mode == "never":
        return None
    with _omp_thread_limit(threads):
        problem = tesseract_problem()  # imports tesserocr: a libtesseract built with OpenMP reads the limit now
        if problem is not None:
            if mode == "always":
                raise OcrUnavailable(f"tesseract was asked for (tesseract='always') but {problem}")
            if not _tesseract_absent_logged:
                log.info("reading Latin, Chinese and Japanese only (rapidocr): %s", problem)
                _tesseract_absent_logged = True
            return None
        import tesserocr

        tessdata = find_tessdata()
        scripts = "+".join(tesseract_scripts(tessdata))
        try:
            api = tesserocr.PyTessBaseAPI(path=str(tessdata), lang=scripts, psm=tesserocr.PSM.SINGLE_LINE,
                                          oem=tesserocr.OEM.LSTM_ONLY)
        except RuntimeError as exc:
            if mode == "always":
                raise OcrUnavailable(f"tesseract failed to load {scripts} from {tessdata}: {exc}") from None
            log.warning("tesseract failed to load %s from %s (%s); reading with rapidocr only", scripts, tessdata, exc)
            return None
    log.debug("tesseract %s loaded from %s", scripts, tessdata)
    return api


@contextlib.contextmanager
def _omp_thread_limit(threads: int) -> Iterator[None]:
    """OMP_THREAD_LIMIT while tesseract loads, then as it was: on a busy 2-core machine tesseract's OpenMP at 2
    threads was 7x slower (spinning), yet the limit must not outlive the load and cap torch's threads later.
    (The pinned tesserocr wheel's libtesseract is built without OpenMP; a system-built one is not.)"""
    old = os.environ.get("OMP_THREAD_LIMIT")
    os.environ["OMP_THREAD_LIMIT"] = str(threads)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_THREAD_LIMIT", None)
        else:
            os.environ["OMP_THREAD_LIMIT"] = old


def _as_rgb(image: Image.Image | str | os.PathLike) -> Image.Image:
    """The photo as upright 8-bit RGB at its own resolution (decoded as ingest and embed decode it)."""
    if isinstance(image, Image.Image):
        try:
            return decode_rgb(image)
        except ImageError as exc:
            raise ValueError(f"cannot read text from {exc.name}: {exc.reason}: {exc.detail}") from None
    try:
        return decode_rgb(Path(image))
    except FileNotFoundError:
        raise FileNotFoundError(f"{image}: no such file") from None
    except ImageError as exc:
        raise ValueError(f"cannot read text from {image}: {exc.reason}: {exc.detail}") from None


def _box_of(points: np.ndarray) -> tuple[float, float, float, float]:
    """The axis-aligned box (x0, y0, x1, y1) around a detected quadrilateral."""
    return (float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max()))


def _crop_for_tesseract(bgr: np.ndarray, points: np.ndarray) -> Image.Image:
    """The box's text straightened, as grey, about _CROP_HEIGHT px high, with a border of its own background."""
    import cv2
    from rapidocr.utils.process_img import get_rotate_crop_image

    crop = get_rotate_crop_image(bgr, points.astype(np.float32).copy())  # also turns vertical text upright
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape[:2]
    if h < 2 or w < 2:
        return Image.fromarray(grey)
    scale = _CROP_HEIGHT / h
    if scale < 1.0 or scale > 1.25:
        grey = cv2.resize(grey, (max(1, round(w * scale)), _CROP_HEIGHT),
                          interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    edge = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    grey = cv2.copyMakeBorder(grey, _CROP_BORDER, _CROP_BORDER, _CROP_BORDER, _CROP_BORDER, cv2.BORDER_CONSTANT,
                              value=int(np.median(edge)))
    return Image.fromarray(grey)


def words_to_line(words: list[tuple[str, float]]) -> tuple[str, float] | None:
    """Tesseract's (word, confidence 0..100) of one line -> (text, score 0..1), without the words that are only
    marks: a box reaching past its sign makes tesseract read the sign's edge as '|', '[' or '=', which would
    otherwise become part of the text and drag its confidence down. None when no word is left."""
    kept = [(w.strip(_EDGE_MARKS), c) for w, c in words if any(ch.isalnum() for ch in w)]
    kept = [(w, c) for w, c in kept if w]
    if not kept:
        return None
    return " ".join(w for w, _ in kept), max(0.0, min(100.0, sum(c for _, c in kept) / len(kept))) / 100.0


#: Greek and Cyrillic letters drawn like a Latin one: capitals, lower case, and small capitals (н т к м в).
_LATIN_LOOKALIKES = frozenset("АВЕКМНОРСТХУІЈЅаеорсухіјѕвкмнт" "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧοικνρτυ")


def latin_lookalike(text: str) -> bool:
    """True when every letter of `text` is Latin or a Greek/Cyrillic letter drawn like a Latin one (ОРЕМ, РАКК,
    ΤΗΑΝΚ YOU): tesseract's script models read Latin signs so. On the shared photos 13 of the 21 non-Latin lines
    tesseract added were such (none of them a real one), 12 on a box rapidocr read as Latin (OPEN, PARK). A source that
    weighs scripts should not count such a line when a rapidocr line has the same box; it cannot be dropped
    here, as real signs are made of such letters too (МОСКВА, МЕТРО)."""
    letters = [ch for ch in text if ch.isalpha()]
    return bool(letters) and all(ch in _LATIN_LOOKALIKES or char_script(ch) == "Latin" for ch in letters)


class TextReader:
    """Reads the text on photos, with its engines loaded once (a worker keeps one for all its photos).

    Not thread-safe: rapidocr keeps per-call settings on itself and tesseract holds one image at a time.
    A lock makes concurrent calls wait rather than mix.
    """

    def __init__(self, cfg: OcrConfig | None = None) -> None:
        self.cfg = cfg or OcrConfig()
        t0 = time.perf_counter()
        self._tess = _load_tesseract(self.cfg.tesseract, self.cfg.threads)  # first: 'always' without it fails at once
        self._rapid = _load_rapidocr(self.cfg.threads)
        self._lock = threading.Lock()
        log.debug("OCR engines loaded in %.1f s (tesseract: %s)", time.perf_counter() - t0, self.uses_tesseract)

    @property
    def uses_tesseract(self) -> bool:
        return self._tess is not None

    @property
    def engines(self) -> tuple[str, ...]:
        return ("rapidocr", "tesseract") if self._tess is not None else ("rapidocr",)

    def close(self) -> None:
        """Free tesseract's models (rapidocr's go with the object)."""
        if self._tess is not None:
            self._tess.End()
            self._tess = None

    def read(self, image: Image.Image | str | os.PathLike) -> Reading:
        """Every confident line of text on the photo (a PIL image or a path), in the photo's own pixels.

        A missing file is FileNotFoundError; bytes that are no usable photo are ValueError naming it.
        """
        rgb = _as_rgb(image)
        width, height = rgb.size
        scale = 1.0
        limit = self.cfg.max_long_side
        if limit is not None and max(width, height) > limit:
            scale = limit / max(width, height)
            rgb = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
        bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
        with self._lock:
            lines = self._read_bgr(bgr)
        if scale != 1.0:
            lines = [TextLine(ln.text, ln.score, tuple(v / scale for v in ln.box), ln.engine, ln.script) for ln in lines]
        return Reading(lines=tuple(lines), width=width, height=height)

    def _read_bgr(self, bgr: np.ndarray) -> list[TextLine]:
        from rapidocr.utils.process_img import map_boxes_to_original

        engine = self._rapid
        # settings persist between calls in rapidocr: always say all of them
        engine.update_params(use_det=True, use_cls=True, use_rec=True, text_score=0.0)
        img, op_record = engine.preprocess_img(bgr)
        det, _, rec, _ = engine.run_ocr_steps(img, op_record)
        if det.boxes is None or len(det.boxes) == 0:
            return []
        boxes = map_boxes_to_original(np.array(det.boxes, dtype=np.float32), op_record, *bgr.shape[:2])
        n = len(boxes)
        texts = list(rec.txts) if rec.txts is not None else [""] * n
        scores = list(rec.scores) if rec.scores is not None else [0.0] * n
        lines: list[TextLine] = []
        for points, text, score in zip(boxes, texts, scores):
            text, score, box = text.strip(), float(score), _box_of(points)
            if text and keep_line(text, score, self.cfg):
                lines.append(TextLine(text, round(score, 4), box, "rapidocr", dominant_script(text)))
            if self._tess is not None:
                second = self._tesseract_line(bgr, points)
                if second is not None and second[0] != text and keep_line(*second, self.cfg):
                    lines.append(TextLine(second[0], round(second[1], 4), box, "tesseract", dominant_script(second[0])))
        return lines

    def _tesseract_line(self, bgr: np.ndarray, points: np.ndarray) -> tuple[str, float] | None:
        """Tesseract's reading of one detected box: (text, mean confidence / 100), None when it reads nothing."""
        crop = _crop_for_tesseract(bgr, points)
        if crop.width < 4 or crop.height < 4:
            return None
        self._tess.SetImage(crop)
        if not self._tess.GetUTF8Text().strip():  # (asking for the words of an empty page prints an error)
            return None
        return words_to_line(self._tess.MapWordConfidences())


__all__ = ["OcrConfig", "OcrUnavailable", "TextReader", "keep_line", "find_tessdata", "tesseract_problem",
           "tesseract_scripts", "TESSERACT_SCRIPTS", "latin_lookalike"]
