"""Quantized models: `trtdebug quantize` (a Q/DQ model from a float one) and the quantized view of a
problem (`--precision int8|fp8|int4`, or FP8/INT4 Q/DQ models detected by their codes' types).

`--format fp8` and `--format int4` place the Q/DQ pairs here (core.quantized.placement: ModelOpt's
FP8 layout on MatMul/Conv/Gemm inputs with amax calibration; INT4 weight-only, block-wise):
onnxruntime's quantize_static takes FP8 only with its "Distribution" calibration, not amax, and
its INT4 path (MatMul4BitsQuantizer) quantizes MatMul weights only. The model is converted to
opset 21 first (FP8 Q/DQ needs 19, block-wise INT4 21).

Quantizing is onnxruntime.quantization's work: `quant_pre_process` (shape inference, constant and
BatchNorm folding), then `quantize_static` in QDQ format with symmetric INT8 activations,
per-channel INT8 weights that keep their float values behind a Q/DQ pair (as ModelOpt and
pytorch-quantization export them, so the float counterpart is exact), float biases (TensorRT
adds biases in float), and MinMax, Entropy or Percentile calibration. Models older than opset 13
(no per-channel QuantizeLinear) are converted with onnx.version_converter first.

`--precision int8` on a Q/DQ model means "as quantized"; on a float model the emulator emulates
TensorRT's implicit INT8 by calibrating it here, in memory, with the same tools.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from trtdebug import logs
from trtdebug.artifacts.mixed_onnx import write_model
from trtdebug.core.model.feeds import feeds_sha256, generate_feeds, load_feeds, resolve_shapes, validate_feeds
from trtdebug.core.model.graph import Model
from trtdebug.core.model.weights import with_weights
from trtdebug.core.plans.precision_plan import QUANTIZED_PRECISIONS, PrecisionPlan
from trtdebug.core.quantized.placement import (
    DEFAULT_BLOCK_SIZE,
    QDQ_OPSET,
    activation_inputs,
    place_fp8,
    place_int4,
)
from trtdebug.core.quantized.qdq import QuantizedModel, find_pairs, has_qdq, integer_ops
from trtdebug.core.system import files
from trtdebug.errors import UserError

Feeds = dict[str, np.ndarray]
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_METHOD = "minmax"  # every command's: quantize, compare, fallback, build's TensorRT calibrator
QUANTIZE_FORMATS = QUANTIZED_PRECISIONS  # what `trtdebug quantize --format` writes
DEFAULT_QUANTIZE_FORMAT = "int8"
PER_CHANNEL_OPSET = 13  # QuantizeLinear's axis attribute (per-channel scales) arrived in opset 13
DEFAULT_GENERATED_BATCHES = 8
# Formats a Q/DQ model's code types say without --precision (INT8 Q/DQ models keep asking for it).
DETECTED_PRECISIONS = ("fp8", "int4")


@dataclass(frozen=True)
class Calibration:
    """Where calibration data comes from and how ranges are chosen from it."""

    inputs: tuple[str | Path, ...] = ()  # .npz files or folders of them; empty: generated batches
    method: str = DEFAULT_CALIBRATION_METHOD
    batches: int = DEFAULT_GENERATED_BATCHES  # generated batches when no inputs are given
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise UserError(f"unknown calibration method {self.method!r}; use one of {', '.join(CALIBRATION_METHODS)}")


@dataclass(frozen=True)
class QuantizeOutcome:
    """The Q/DQ model `quantize` wrote and how; built once, never changed after."""

    path: Path
    pairs: int
    activation_pairs: int
    batches: int
    method: str
    upgraded_from_opset: int | None = None
    notes: tuple[str, ...] = ()
    quant_format: str = "int8"

    def to_json(self) -> dict[str, str | int | list[str] | None]:
        return {"path": str(self.path), "format": self.quant_format, "pairs": self.pairs,
                "activation_pairs": self.activation_pairs, "batches": self.batches, "method": self.method,
                "upgraded_from_opset": self.upgraded_from_opset, "notes": list(self.notes)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization reports through the root logger, and its histogram calibrators
    (percentile, entropy) print(): trtdebug's stdout stays its own (verbose: their lines on stderr)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr if logs.verbose else io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def calibration_files(paths: Sequence[str | Path]) -> list[Path]:
    """The .npz files named, folders expanded (sorted by name)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inside = sorted(path.glob("*.npz"))
            if not inside:
                raise UserError(f"--calib-inputs folder {path} holds no .npz files; save each batch with np.savez")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"--calib-inputs {path} does not exist; give .npz files or a folder of them")
    return found


def calibration_batches(model: Model, calibration: Calibration, shapes: Mapping[str, tuple[int, ...]],
                        ranges: Mapping[str, tuple[float, float]] | None = None) -> list[Feeds]:
    """The calibration batches: the user's files, or seeded random batches of the given shapes."""
    if calibration.inputs:
        return [validate_feeds(model, load_feeds(p)) for p in calibration_files(calibration.inputs)]
    return [generate_feeds(model, shapes, ranges, calibration.seed + i) for i in range(calibration.batches)]


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, batches: Sequence[Feeds]):
        self._iterator = iter(batches)

    def get_next(self) -> Feeds | None:
        return next(self._iterator, None)

    def rewind(self) -> None:  # pragma: no cover - part of the protocol some calibrators call
        pass


def upgraded(model: Model, opset: int = PER_CHANNEL_OPSET) -> tuple[onnx.ModelProto, int | None]:
    """The model, weights embedded (what onnxruntime's quantization tools and the placement read), at an
    opset with the Q/DQ it needs (per-channel: 13); returns the old opset when it converted."""
    whole = with_weights(model.proto, model.weights)
    if model.opset >= opset:
        return whole, None
    try:
        converted = onnx.version_converter.convert_version(whole, opset)
    except Exception as exc:
        raise UserError(f"{model.name} is at opset {model.opset}, too old for its Q/DQ, and "
                        f"onnx.version_converter cannot convert it to {opset} ({exc}); "
                        f"re-export it at opset >= {opset}") from None
    return converted, model.opset


def activation_amax(model: Model, proto: onnx.ModelProto, batches: Sequence[Feeds]) -> dict[str, float]:
    """The largest magnitude each tensor an FP8 build quantizes reaches over the batches (amax calibration)."""
    from trtdebug.core.reference import ort_sessions

    tensors = activation_inputs(Model.from_proto(proto))
    session = ort_sessions.session(ort_sessions.with_outputs(proto, tensors))
    amax = dict.fromkeys(tensors, 0.0)
    for batch in batches:
        values = ort_sessions.run(session, batch, tensors)
        for name in tensors:
            finite = np.asarray(values[name], np.float64)
            finite = finite[np.isfinite(finite)]
            amax[name] = max(amax[name], float(np.abs(finite).max()) if finite.size else 0.0)
    return amax


def quantize_float_format(model: Model, batches: Sequence[Feeds], quant_format: str,
                          block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[onnx.ModelProto, int | None]:
    """An FP8 (amax-calibrated on `batches`) or INT4 weight-only Q/DQ version of `model`."""
    if has_qdq(model):
        raise UserError(f"{model.name} is already quantized (it has QuantizeLinear/DequantizeLinear nodes); "
                        "compare it as it is (trtdebug compare detects its format)")
    proto, old_opset = upgraded(model, QDQ_OPSET)
    if quant_format == "int4":
        placed = place_int4(proto, block_size)
    else:
        if not batches:
            raise UserError("no calibration batches; give --calib-inputs or let trtdebug generate them")
        placed = place_fp8(proto, activation_amax(model, proto, batches))
    if not find_pairs(Model.from_proto(placed)):
        raise UserError(f"{model.name} has no MatMul, Conv or Gemm {'weights ' if quant_format == 'int4' else ''}"
                        f"to quantize to {quant_format.upper()}")
    return placed, old_opset


def quantize_proto(model: Model, batches: Sequence[Feeds],
                   method: str = DEFAULT_CALIBRATION_METHOD) -> tuple[onnx.ModelProto, int | None]:
    """A Q/DQ version of `model`, calibrated on `batches`. Returns it and the opset it was upgraded from."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if has_qdq(model):
        raise UserError(f"{model.name} is already quantized (it has QuantizeLinear/DequantizeLinear nodes); "
                        "compare it as it is with --precision int8")
    if not batches:
        raise UserError("no calibration batches; give --calib-inputs or let trtdebug generate them")
    proto, old_opset = upgraded(model)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        source, prepared, quantized = (Path(tmp) / name for name in ("float.onnx", "prepared.onnx", "qdq.onnx"))
        onnx.save(proto, str(source))
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception:
            prepared = source  # pre-processing is an optimization; quantizing works without it
        try:
            quantize_static(str(prepared), str(quantized), _Batches(batches), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method],
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "AddQDQPairToWeight": True, "QuantizeBias": False})
        except UserError:
            raise
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"onnxruntime could not quantize {model.name}: {reason}") from None
        return onnx.load(str(quantized)), old_opset


def run_quantize(model_path: str | Path, out: str | Path, calibration: Calibration,
                 input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                 input_ranges: Mapping[str, tuple[float, float]] | None = None,
                 quant_format: str = "int8", block_size: int | None = None) -> QuantizeOutcome:
    """`trtdebug quantize`: write a Q/DQ model of `model_path` to `out` (atomically, never over an input),
    in `quant_format` (int8, fp8 or int4 weight-only)."""
    if quant_format not in QUANTIZE_FORMATS:
        raise UserError(f"unknown format {quant_format!r}; use one of {', '.join(QUANTIZE_FORMATS)}")
    block_size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    if block_size < 1:
        raise UserError(f"--block-size {block_size} must be a positive number of values per scale (32-128 is usual)")
    model = Model.load(model_path)
    inputs: dict[str, str | Path | None] = {"model": model_path}
    inputs.update({f"model's external data {p.name}": p for p in model.data_files})
    if calibration.inputs:
        inputs.update({f"--calib-inputs file {p.name}": p for p in calibration_files(calibration.inputs)})
    files.prepare_outputs({"--out": out}, inputs)
    weight_only = quant_format == "int4"
    shapes = resolve_shapes(model, input_shapes or {}) if not calibration.inputs and not weight_only else {}
    batches = [] if weight_only else calibration_batches(model, calibration, shapes, input_ranges)
    if quant_format == "int8":
        proto, old_opset = quantize_proto(model, batches, calibration.method)
    else:
        proto, old_opset = quantize_float_format(model, batches, quant_format, block_size)
    pairs = find_pairs(Model.from_proto(proto))
    write_model(proto, out)  # last: beyond 2 GiB it moves the weights out of `proto`
    method = {"int8": calibration.method, "fp8": "amax", "int4": "weights only"}[quant_format]
    notes: list[str] = []
    if old_opset is not None:
        target = PER_CHANNEL_OPSET if quant_format == "int8" else QDQ_OPSET
        notes.append(f"converted from opset {old_opset} to {target} for its Q/DQ")
    if quant_format == "fp8" and calibration.method != "minmax":
        notes.append(f"FP8 scales come from amax calibration; --calib-method {calibration.method} "
                     "applies to INT8 only")
    if not calibration.inputs and not weight_only:
        notes.append(f"calibrated on {len(batches)} generated random batches; real data gives real "
                     "ranges: pass --calib-inputs")
    return QuantizeOutcome(Path(out), len(pairs), sum(not p.is_weight for p in pairs.values()), len(batches),
                           method, old_opset, tuple(notes), quant_format)


def _calibration_identity(batches: Sequence[Feeds], method: str) -> str:
    return feeds_sha256({f"{index}:{name}": value for index, batch in enumerate(batches)
                         for name, value in batch.items()}, method)


def int8_model(model: Model, precision: str | None, plan_path: str | Path | None, feeds: Mapping[str, np.ndarray],
               calibration: Calibration | None = None, engine: str = "emulator") -> Model:
    """The model a quantized problem (INT8, FP8, INT4) works on, or `model` itself when the build is not
    quantized.

    A Q/DQ model becomes its float counterpart (the reference) with the Q/DQ graph attached; without
    --precision, FP8 and INT4 Q/DQ models are detected by their codes' types. On the emulator a float
    model is calibrated here for INT8 (implicit INT8); TensorRT calibrates it itself. FP8 and INT4
    have no implicit mode: their float models are quantized first (`trtdebug quantize --format`)."""
    if precision is None and plan_path is not None:
        precision = PrecisionPlan.load(plan_path).default
    if precision is None and has_qdq(model) and not integer_ops(model):  # FP8/INT4 Q/DQ tell by their codes
        quantized = QuantizedModel(model)
        return quantized if quantized.precision in DETECTED_PRECISIONS else model
    if precision not in QUANTIZED_PRECISIONS:
        return model
    if has_qdq(model):
        quantized = QuantizedModel(model)
        if quantized.precision != precision and quantized.pairs:
            raise UserError(f"{model.name} is an {quantized.precision.upper()} Q/DQ model; compare it with "
                            f"--precision {quantized.precision} (or leave --precision out)")
        return quantized
    if precision != "int8":
        raise UserError(f"--precision {precision} needs an {precision.upper()} Q/DQ model and {model.name} has no "
                        f"Q/DQ nodes; write one with `trtdebug quantize {model.name} --format {precision}`")
    if engine != "emulator":
        return model
    calibration = calibration or Calibration()
    batches = (calibration_batches(model, calibration, {}) if calibration.inputs else [dict(feeds)])
    proto, _ = quantize_proto(model, batches, calibration.method)
    return QuantizedModel(Model.from_proto(proto), implicit=True, path=model.path, identity=model.sha256,
                          calibration={"method": calibration.method, "batches": len(batches),
                                       "sha256": _calibration_identity(batches, calibration.method)})
