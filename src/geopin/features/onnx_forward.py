"""A backbone's forward pass on ONNX Runtime: exported once per weights, cached on disk, checked against PyTorch.

Why ONNX Runtime: on the 2-core reference machine it ran the EfficientNet-Lite0 forward of one 384 px photo in
10-14 ms against PyTorch's 15-27 ms, within 6e-6 of PyTorch's features (issue 23); and it is already installed,
for OCR. (OpenVINO was 9 ms at f32 but is a large extra dependency.)

Only the forward pass of `embed`, `predict` and `serve` runs here. PyTorch stays for everything that needs the
modules or gradients (Grad-CAM, occlusion, fine-tuning): they use `backbone.model`, which is never changed.

How:
- The network is exported with batch, height and width as dynamic axes (photos keep their aspect ratio, so a
  batch bucket can have any shape) to `cache_root()/onnx/<name>-<hash>.onnx`, the hash covering the backbone's
  name and version (weights and inference graph), torch's version and this module's export format. The file
  is written to a temporary name and renamed, so a reader never sees half of it.
- Every process checks its session against PyTorch on a few input shapes before trusting it (a landscape and a
  portrait photo, and the native square): a cached file that cannot be loaded or that disagrees is exported
  again, with a log line; an export that still disagrees is not used.
- runtime "auto" falls back to PyTorch with one warning saying why (no `onnx` package to export with, an
  operator ONNX lacks, a disagreement); runtime "onnx" raises ExportFailed instead.
- One session per (file, threads) per process, sequential execution, `threads` intra-op threads that sleep
  when idle (spinning threads steal the cores the decode threads need, as with OMP_WAIT_POLICY=PASSIVE).

The embedding cache key does not name the runtime: features from ONNX Runtime are checked here to agree with
PyTorch's within TOLERANCE (1e-4; measured ~1e-5 on real photos), far below what changes a guess, so vectors
from either runtime are interchangeable.

Precision "int8" (issue 23: ~2x the f32 forward) runs a static-quantized copy of the f32 export, built from it and
the backbone's shipped activation ranges (geopin.features.quantize) and cached beside it under a hash of the f32
file, the ranges, onnxruntime's version and INT8_FORMAT. Its features differ from f32 ones (cosine ~0.99), so
the precision IS part of the embedding cache key and of the stored backbone config; each process checks the
int8 session against PyTorch on a few generated photo-like images (cosine >= COSINE_FLOOR) to catch a broken
quantization. Without a usable table, "int8" raises ExportFailed naming the fix, or under runtime "auto" runs
at f32 with one warning (BatchForward.precision_used says which ran).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geopin.features.backbones import Backbone, whole_size
from geopin.features.backbones.preprocess import PRECISIONS
from geopin.io import atomic_path, cache_root, sha256_file

if TYPE_CHECKING:
    import onnxruntime
    import torch

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "torch")
#: Bump when the export changes (opset, axes, names): part of every exported file's hash.
EXPORT_FORMAT = "v1"
OPSET = 17
#: Largest absolute difference from PyTorch's features that a session may show on the check inputs.
TOLERANCE = 1e-4
INPUT, OUTPUT = "pixels", "features"
_CHECK_SEED = 0
#: Bump when the int8 build changes (pre-processing, quantizer call): part of every int8 file's hash.
INT8_FORMAT = "i1"
#: Least cosine between int8 and PyTorch features on the generated check images. Measured on Lite0: ~0.99 on
#: the shared photos (least 0.96); a quantization with wrong ranges falls far below.
COSINE_FLOOR = 0.95


class ExportFailed(RuntimeError):
    """The backbone cannot run on ONNX Runtime here; the message says why."""


def onnx_cache_dir() -> Path:
    """Where exported networks live: geopin's cache root / onnx."""
    return cache_root() / "onnx"


def export_spec(backbone: Backbone) -> dict[str, Any]:
    """What decides the exported file: the weights and graph (name, version), the exporter and our format."""
    import torch

    return {"backbone": backbone.name, "version": backbone.version, "family": backbone.config.family,
            "torch": torch.__version__, "opset": OPSET, "format": EXPORT_FORMAT,
            "dynamic_axes": ["batch", "height", "width"]}


def export_path(backbone: Backbone, folder: Path | None = None) -> Path:
    """The cached file of this backbone's export (a hash of export_spec in its name)."""
    digest = hashlib.sha256(json.dumps(export_spec(backbone), sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in backbone.name)[:60]  # the hash tells apart
    return (folder or onnx_cache_dir()) / f"{safe}-{digest}.onnx"


def check_shapes(backbone: Backbone) -> list[tuple[int, int, int, int]]:
    """Inputs (B, 3, H, W) a session is checked on: the native square (batch of 2: the batch axis), and for
    backbones that take photos at their own aspect ratio, a 4:3 landscape and a 3:4 portrait at the long side."""
    cfg = backbone.config
    shapes = [(2, 3, cfg.native_size, cfg.native_size)]
    if cfg.whole_fit == "resize":
        w, h = whole_size(4, 3, cfg.long_side, cfg.side_multiple)
        shapes += [(1, 3, h, w), (1, 3, w, h)]
    return shapes


def export_onnx(backbone: Backbone, path: Path) -> Path:
    """Export backbone.model to `path` (temp file, then rename); ExportFailed with the exporter's reason."""
    import torch

    example = torch.zeros(check_shapes(backbone)[-1])
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            # The tracer warns about every size it reads; the check against PyTorch is what decides. The
            # TorchScript exporter is deprecated, but the newer one needs two more packages (onnxscript, onnx).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                with torch.inference_mode(False), torch.no_grad():
                    torch.onnx.export(
                        backbone.model, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                        input_names=[INPUT], output_names=[OUTPUT],
                        dynamic_axes={INPUT: {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch"}},
                    )
            except (RuntimeError, TypeError, ValueError) as exc:  # OnnxExporterError is a RuntimeError
                raise ExportFailed(f"torch.onnx.export failed: {_first_line(exc)}") from exc
    except OSError as exc:
        raise ExportFailed(f"cannot write {path}: {exc.strerror or exc}") from exc
    logger.info("exported %s to ONNX: %s (%.1f MB)", backbone.name, path, path.stat().st_size / 1e6)
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    cause = exc.__cause__
    if isinstance(cause, ModuleNotFoundError):  # the exporter needs the `onnx` package
        return f"{cause} (pip install onnx)"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _ort_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's load and run errors (they derive from Exception only)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
             "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    return (OSError, RuntimeError, ValueError) + tuple(getattr(state, n) for n in names if hasattr(state, n))


_SESSIONS: dict[tuple[str, int, int], onnxruntime.InferenceSession] = {}
_LOCK = threading.RLock()  # one export or session load at a time per process (serve calls from many threads)


def session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    """The process's session for this file and thread count (made once; keyed by the file's mtime too, so a
    rebuilt file gets a new session)."""
    import onnxruntime as ort

    key = (str(path), path.stat().st_mtime_ns, threads)
    with _LOCK:
        if key not in _SESSIONS:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.log_severity_level = 3  # errors only: ORT's own warnings are about graph details we check anyway
            for old in [k for k in _SESSIONS if k[0] == key[0] and k[2] == threads]:
                del _SESSIONS[old]
            _SESSIONS[key] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return _SESSIONS[key]


def max_difference(backbone: Backbone, sess: onnxruntime.InferenceSession) -> float:
    """Largest |ONNX - PyTorch| of the features over the check inputs (seeded noise at the check shapes)."""
    import torch

    rng = np.random.default_rng(_CHECK_SEED)
    worst = 0.0
    for shape in check_shapes(backbone):
        x = rng.standard_normal(shape, dtype=np.float32)
        with torch.inference_mode():
            want = backbone.model(torch.from_numpy(x)).float().cpu().numpy()
        got = sess.run([OUTPUT], {INPUT: x})[0]
        if got.shape != want.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def checked_session(backbone: Backbone, threads: int, folder: Path | None = None) -> onnxruntime.InferenceSession:
    """A session that agrees with backbone.model, exporting (or re-exporting a bad cached file) when needed.

    Raises ExportFailed when the network cannot be exported or its export disagrees with PyTorch.
    """
    if any(p.device.type != "cpu" for p in backbone.model.parameters()):
        raise ExportFailed("the backbone is not on the CPU (ONNX Runtime runs here on the CPU only)")
    path = export_path(backbone, folder)

    def check(sess) -> str | None:
        diff = max_difference(backbone, sess)
        return None if diff <= TOLERANCE else f"differs from PyTorch by {diff:.2g} (> {TOLERANCE:g}) on the check inputs"

    sess = _reuse_or_build(path, threads, lambda: export_onnx(backbone, path), check, "the export")
    logger.debug("%s on ONNX Runtime: within %g of PyTorch", backbone.name, TOLERANCE)
    return sess


def _reuse_or_build(path: Path, threads: int, build: Callable[[], Any], check: Callable[[Any], str | None], what: str,
                    fix: str = "") -> onnxruntime.InferenceSession:
    """The session of the cached file at `path` when it loads and passes `check` (None: good, else what is wrong);
    otherwise (re)built by build() and checked again, ExportFailed naming `what` and `fix` when it still fails."""
    errors = _ort_errors()
    with _LOCK:
        if path.exists():
            try:
                sess = session(path, threads)
                problem = check(sess)
            except errors as exc:
                logger.warning("rebuilding %s: cannot be loaded (%s)", path, _first_line(exc))
            else:
                if problem is None:
                    return sess
                logger.warning("rebuilding %s: %s", path, problem)
        build()
        try:
            sess = session(path, threads)
            problem = check(sess)
        except errors as exc:
            raise ExportFailed(f"ONNX Runtime cannot run {what}: {_first_line(exc)}") from exc
        if problem is not None:
            raise ExportFailed(f"{what} {problem}{fix}")
        return sess


# Per backbone model (weakly held): its checked sessions by (precision, threads, folder), and per precision why
# ONNX Runtime cannot run it, so that each process checks a model once and "auto" warns once.
_CHECKED: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()
_FAILED: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def model_session(backbone: Backbone, threads: int, folder: Path | None = None,
                  precision: str = "f32") -> onnxruntime.InferenceSession:
    """checked_session (or int8_session), once per backbone model, precision, thread count and folder in this process."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    with _LOCK:
        reason = _FAILED.get(backbone.model, {}).get(precision)
        if reason is not None:
            raise ExportFailed(reason)
        known = _CHECKED.setdefault(backbone.model, {})
        key = (precision, threads, str(folder or onnx_cache_dir()))
        if key not in known:
            try:
                make = checked_session if precision == "f32" else int8_session
                known[key] = make(backbone, threads, folder)
            except ExportFailed as exc:
                _FAILED.setdefault(backbone.model, {})[precision] = str(exc)
                raise
        return known[key]


def _failed(model: Any, precision: str) -> bool:
    return precision in _FAILED.get(model, {})


# ----------------------------------------------------------------------------------------------------------
# int8


def int8_path(f32_path: Path, table: dict) -> Path:
    """The cached int8 file of an f32 export and a table (beside the export; the hash covers both, onnxruntime's
    version and INT8_FORMAT, so any of them changing builds a new file)."""
    import onnxruntime as ort

    from geopin.features.quantize import table_digest

    spec = {"f32": sha256_file(f32_path), "table": table_digest(table), "onnxruntime": ort.__version__,
            "format": INT8_FORMAT}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return f32_path.with_name(f"{f32_path.stem}-int8-{digest}.onnx")


def build_int8(backbone: Backbone, f32_path: Path, table: dict, path: Path) -> Path:
    """Quantize the f32 export with the table's ranges into `path` (temp file, then rename); ExportFailed if
    the table does not fit this export."""
    import tempfile

    from geopin.features.quantize import (
        TableProblem,
        check_names,
        pre_process,
        quantize,
    )

    with tempfile.TemporaryDirectory(prefix="geopin-int8-") as tmp, _quiet_quantizer():
        pre = pre_process(f32_path, Path(tmp) / "pre.onnx")
        try:
            check_names(table, pre, backbone.name)
        except TableProblem as exc:
            raise ExportFailed(str(exc)) from None
        try:
            with atomic_path(path) as out:
                quantize(pre, out, table["ranges"])
        except OSError as exc:
            raise ExportFailed(f"cannot write {path}: {exc.strerror or exc}") from exc
    logger.info("quantized %s to int8: %s (%.1f MB)", backbone.name, path, path.stat().st_size / 1e6)
    return path


class _QuantizerLogs(logging.Filter):
    """ONNX Runtime's quantizer logs on the root logger about every shape tensor it leaves in float."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname or record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_quantizer():
    flt = _QuantizerLogs()
    logging.root.addFilter(flt)
    try:
        yield
    finally:
        logging.root.removeFilter(flt)


def check_images(backbone: Backbone) -> list[np.ndarray]:
    """(1, 3, H, W) inputs of seeded photo-like images (smooth colour fields, shapes, grain) as the backbone's
    config prepares them: int8 ranges are calibrated on photos, so noise would not test them fairly."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(_CHECK_SEED)
    out = []
    for i, (w, h) in enumerate(((640, 480), (480, 640), (512, 512))):
        img = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(1.5))
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        out.append(backbone.preprocess(img).numpy()[None])
    return out


def least_cosine(backbone: Backbone, sess: onnxruntime.InferenceSession) -> float:
    """Least cosine between the session's and PyTorch's features over check_images."""
    import torch

    worst = 1.0
    for x in check_images(backbone):
        with torch.inference_mode():
            want = backbone.model(torch.from_numpy(x)).float().cpu().numpy()[0]
        got = sess.run([OUTPUT], {INPUT: x})[0][0]
        denom = float(np.linalg.norm(got) * np.linalg.norm(want))
        worst = min(worst, float(got @ want) / denom if denom > 0 else 0.0)
    return worst


def int8_session(backbone: Backbone, threads: int, folder: Path | None = None) -> onnxruntime.InferenceSession:
    """A session of the int8 copy of the checked f32 export, built (or rebuilt when bad) and checked against
    PyTorch. ExportFailed when f32 cannot run, when the backbone has no table that fits, or the check fails."""
    from geopin.features.quantize import TableProblem, read_table

    model_session(backbone, threads, folder, "f32")  # the f32 export, made and checked
    try:
        table = read_table(backbone.name, backbone.version)
    except TableProblem as exc:
        raise ExportFailed(str(exc)) from None
    f32_path = export_path(backbone, folder)
    path = int8_path(f32_path, table)

    def check(sess) -> str | None:
        cos = least_cosine(backbone, sess)
        return None if cos >= COSINE_FLOOR else f"gives features off PyTorch's (cosine {cos:.3f} < {COSINE_FLOOR:g} on the check images)"

    sess = _reuse_or_build(path, threads, lambda: build_int8(backbone, f32_path, table, path), check, "the int8 file",
                           fix=f": the calibration table does not suit these weights; make it again with "
                               f"`python scripts/calibrate_int8.py --backbone {backbone.name}`")
    logger.debug("%s at int8 on ONNX Runtime: cosine >= %g to PyTorch", backbone.name, COSINE_FLOOR)
    return sess


def torch_forward(model: torch.nn.Module) -> Callable[[torch.Tensor], np.ndarray]:
    """Batch -> float32 features on PyTorch (the caller sets threads and inference mode)."""
    return lambda batch: model(batch).float().cpu().numpy()


@dataclass
class BatchForward:
    """(B, 3, H, W) float tensor -> (B, dim) float32 features, on the runtime and precision asked for.

    Chosen on the first batch, so a run whose photos are all cached never exports. `runtime` says which
    one ran ("onnx" or "torch"; None before the first batch), `precision_used` at which precision ("f32" when
    "int8" was asked under runtime "auto" but cannot run here).
    """

    backbone: Backbone
    requested: str = "auto"
    threads: int | None = None
    folder: Path | None = None  # where exports are cached; None: onnx_cache_dir()
    precision: str = "f32"
    runtime: str | None = None
    precision_used: str | None = None

    def __post_init__(self) -> None:
        if self.requested not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.requested!r}; choose one of {', '.join(RUNTIMES)}")
        check_precision(self.precision, self.requested)
        self._run: Callable | None = None

    def resolve(self) -> str:
        """Pick the runtime now (export if needed); the name of the one chosen."""
        if self._run is None:
            self._run, self.runtime, self.precision_used = self._choose()
        return self.runtime

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        if self._run is None:
            self.resolve()
        return self._run(batch)

    def _choose(self) -> tuple[Callable, str, str]:
        if self.requested == "torch":
            return torch_forward(self.backbone.model), "torch", "f32"
        model = self.backbone.model
        if model is None:
            raise ValueError(f"backbone {self.backbone.name!r} has no model")
        threads = self.threads or os.cpu_count() or 1
        warned = _failed(model, "f32")
        int8_reason = None
        if self.precision == "int8":
            warned_int8 = _failed(model, "int8")
            try:
                return _onnx_run(model_session(self.backbone, threads, self.folder, "int8")), "onnx", "int8"
            except ExportFailed as exc:
                if self.requested == "onnx":
                    raise ExportFailed(f"backbone {self.backbone.name!r} cannot run at int8 on ONNX Runtime: {exc}") from None
                int8_reason = None if warned_int8 else str(exc)
        try:
            sess = model_session(self.backbone, threads, self.folder, "f32")
        except ExportFailed as exc:
            reason = str(exc)
            if self.requested == "auto" and not warned:
                logger.warning("%s runs on PyTorch, not ONNX Runtime: %s", self.backbone.name, reason)
        else:
            if int8_reason is not None:
                logger.warning("%s runs at f32, not int8: %s", self.backbone.name, int8_reason)
            return _onnx_run(sess), "onnx", "f32"
        if self.requested == "onnx":
            raise ExportFailed(f"backbone {self.backbone.name!r} cannot run on ONNX Runtime: {reason}")
        return torch_forward(model), "torch", "f32"


def check_precision(precision: str, runtime: str) -> None:
    """ValueError for an unknown precision, or int8 asked of PyTorch (only ONNX Runtime runs it here)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and runtime == "torch":
        raise ValueError("precision 'int8' runs on ONNX Runtime only, not with runtime 'torch': "
                         "choose runtime 'onnx' or 'auto', or precision 'f32'")


def _onnx_run(sess: onnxruntime.InferenceSession) -> Callable[[torch.Tensor], np.ndarray]:
    def run(batch) -> np.ndarray:
        x = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        return sess.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run
