"""Static int8 quantization of an exported backbone with activation ranges shipped as package data (issue 23).

Why int8: at f32 ONNX Runtime is ~1.2x PyTorch on the embed pipeline; ORT's static int8 (QOperator,
per-channel QInt8 weights, QUInt8 activations, MinMax ranges) ran the Lite0 forward of one 384 px photo 2.2x
faster than f32, its features within cosine ~0.99 of f32 (bench/bench_int8_accuracy.py measures what that does
to the guesses). Dynamic quantization was slower than f32 and further off (cosine 0.89).

Why a shipped table: the activation ranges decide the int8 features, so they must not depend on the user's
photos. scripts/calibrate_int8.py computes them once on a fixed, seeded sample of the shared photos with ORT's
own MinMax calibrator and writes `geopin/data/int8/<backbone>.json` (tensor name -> [lowest, highest]; no
pixels). Building the int8 file then needs no photo: the cached f32 export is pre-processed (shape inference
and ORT's basic graph fusions, which name the tensors the table refers to) and quantized with those ranges.

This module only quantizes; caching the file and checking it against PyTorch live in onnx_forward.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Bump when the table's layout changes.
TABLE_FORMAT = 1
#: How the network is quantized: part of the int8 file's hash and recorded in each table.
SETTINGS = {"format": "QOperator", "per_channel": True, "activations": "QUInt8", "weights": "QInt8", "method": "MinMax"}
CALIBRATE_SCRIPT = "python scripts/calibrate_int8.py"


class TableProblem(ValueError):
    """The shipped ranges cannot quantize this export; the message says why and how to fix it."""


def table_name(backbone_name: str) -> str:
    """File name of a backbone's table (the registry name made safe for a file name)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in backbone_name)[:80] + ".json"


def shipped_table_path(backbone_name: str) -> Path:
    """Where the package keeps this backbone's table (it may not exist)."""
    return Path(str(resources.files("geopin") / "data" / "int8" / table_name(backbone_name)))


def read_table(backbone_name: str, version: str, path: Path | None = None) -> dict[str, Any]:
    """The table of a backbone (its version must match: other weights have other ranges); TableProblem if none."""
    path = path or shipped_table_path(backbone_name)
    if not path.exists():
        raise TableProblem(f"no int8 calibration table for backbone {backbone_name!r} (looked for {path}); "
                           f"make one with `{CALIBRATE_SCRIPT} --backbone {backbone_name}`")
    try:
        table = json.loads(path.read_text())
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in table["ranges"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise TableProblem(f"{path}: cannot be read as an int8 calibration table ({type(exc).__name__}: {exc}); "
                           f"make it again with `{CALIBRATE_SCRIPT} --backbone {backbone_name}`") from None
    if table.get("format") != TABLE_FORMAT or table.get("settings") != SETTINGS:
        raise TableProblem(f"{path}: written for another quantization (format {table.get('format')!r}, settings "
                           f"{table.get('settings')!r}); make it again with `{CALIBRATE_SCRIPT} --backbone {backbone_name}`")
    if table.get("version") != version:
        raise TableProblem(f"{path}: calibrated for {backbone_name} version {table.get('version')!r}, this one is "
                           f"{version!r}; make it again with `{CALIBRATE_SCRIPT} --backbone {backbone_name}`")
    bad = [k for k, (lo, hi) in ranges.items() if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi)]
    if bad or not ranges:
        raise TableProblem(f"{path}: {len(bad)} tensor range(s) not finite or reversed (e.g. {bad[:1]}), or none at all")
    return {**table, "ranges": ranges}


def table_digest(table: dict[str, Any]) -> str:
    """sha256 of what in a table decides the int8 file (the ranges and the settings)."""
    body = {"format": table["format"], "settings": table["settings"],
            "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in sorted(table["ranges"].items())}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def op_types() -> list[str]:
    """The operators quantize_static quantizes (and calibrates) by default for the QOperator format."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def pre_process(src: Path, dst: Path) -> Path:
    """Shape inference and ORT's basic fusions, as ORT advises before quantizing: the graph the table names."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst))
    return dst


def calibrated_tensors(model_path: Path) -> set[str]:
    """Names of the activations the calibrator records for this graph (float inputs and outputs of the nodes
    it quantizes, weights excluded): the keys a table for it must have."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(model_path))
    infos = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    weights = {w.name for w in model.graph.initializer}
    wanted = set(op_types())
    names = set()
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        for name in list(node.input) + list(node.output):
            vi = infos.get(name)
            if (vi is not None and name not in weights and vi.type.HasField("tensor_type")
                    and vi.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)):
                names.add(name)
    return names


def calibrate(pre_path: Path, inputs: Iterable[dict[str, Any]], work: Path) -> dict[str, tuple[float, float]]:
    """Activation ranges (lowest, highest) of the pre-processed graph over `inputs` (feeds {name: array}),
    by ORT's MinMax calibrator, the one quantize_static runs. `work`: a folder for its augmented copy."""
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        create_calibrator,
    )

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(inputs)

        def get_next(self):
            return next(self.it, None)

    calibrator = create_calibrator(Path(pre_path), op_types(), augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(Feeds())
    data = calibrator.compute_data()
    return {name: (_scalar(d.range_value[0]), _scalar(d.range_value[1])) for name, d in data.items()}


def _scalar(value) -> float:
    """A calibrated bound (ORT keeps a 1-element float32 array per tensor) as a float, exactly."""
    import numpy as np

    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    if arr.size != 1:
        raise ValueError(f"expected one range per tensor, got {arr.size} values")
    return float(arr[0])


def check_names(table: dict[str, Any], pre_path: Path, backbone_name: str) -> None:
    """TableProblem unless the table has a range for exactly the tensors this graph's quantizer needs."""
    have, need = set(table["ranges"]), calibrated_tensors(pre_path)
    missing, extra = sorted(need - have), sorted(have - need)
    if missing or extra:
        raise TableProblem(
            f"the int8 calibration table of {backbone_name} does not fit this export ({len(missing)} tensor(s) without "
            f"a range, e.g. {missing[:2]}; {len(extra)} unknown, e.g. {extra[:2]}): it was made with another torch or "
            f"onnxruntime; make it again here with `{CALIBRATE_SCRIPT} --backbone {backbone_name}`")


def quantize(pre_path: Path, out_path: Path, ranges: dict[str, tuple[float, float]]) -> Path:
    """Write the int8 graph of a pre-processed f32 graph with the given activation ranges (no calibration run):
    what quantize_static does after calibrating, in the QOperator format of SETTINGS."""
    import numpy as np
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
    )
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import (
        QuantizationMode,
        QuantType,
        load_model_with_shape_infer,
    )

    model = load_model_with_shape_infer(Path(pre_path))
    tensors = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array([lo], dtype=np.float32), highest=np.array([hi], dtype=np.float32))
        for name, (lo, hi) in ranges.items()
    })
    quantizer = ONNXQuantizer(
        model, SETTINGS["per_channel"], False, QuantizationMode.QLinearOps, True,  # reduce_range off; static
        QuantType.QInt8, QuantType.QUInt8, tensors, [], [], op_types(), {},
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(out_path), False)
    return out_path
