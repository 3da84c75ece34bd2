"""A recording fake of the `tensorrt` module whose API is checked against tensorrt-stubs.

Every public attribute the code under test reads, writes or calls on a fake object (module,
enum, class or instance) must exist in the tensorrt-stubs .pyi files (TensorRT 10.13), parsed
with `ast`; with `rtx=True` it must also exist in dir() of the real tensorrt_rtx_bindings module,
so the fake then offers only what both have (a TensorRT 11-like, strongly typed API). A name that
is missing raises AttributeError, as the real module would, and is recorded in `misses`: tests
assert that nothing but expected feature probes missed, so a misspelt TensorRT name fails.

The fake builds a network from the ONNX model (one layer per node, "[ONNX Layer: name]"
metadata, a Gemm becomes a matrix multiply plus a bias add), simulates the algorithm selector and
the editable timing cache with its verbose log, and "runs" engines with onnxruntime through a fake
cuda-python runtime whose device memory is host memory, so the whole run path executes.
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import re
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtdebug.core.reference import ort_sessions

# ---------------------------------------------------------------------------------------------
# The API surface, from the stubs (and the real TensorRT-RTX module)
# ---------------------------------------------------------------------------------------------


@dataclass
class StubApi:
    classes: dict[str, set[str]]  # class (nested as "ILogger.Severity") -> members, inherited included
    enums: dict[str, dict[str, int]]  # enum class -> member -> value (from the stubs' "# value = <...: N>")
    module: set[str]

    def has(self, owner: str, name: str) -> bool:
        if owner == "tensorrt":
            return name in self.module
        return name in self.classes.get(owner, set())


def stub_folder() -> Path:
    import tensorrt_stubs

    return Path(tensorrt_stubs.__file__).resolve().parent.parent


def _parse_leniently(lines: list[str]) -> ast.Module:
    """The generated stubs have a few signatures Python rejects (a non-default argument after
    defaults); only the member's name matters here, so such a signature is reduced to (*args)."""
    while True:
        try:
            return ast.parse("\n".join(lines))
        except SyntaxError as exc:
            line = lines[(exc.lineno or 1) - 1]
            match = re.match(r"(\s*)def (\w+)\(", line)
            if match is None:
                raise
            signature = "(self, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:"
            lines[(exc.lineno or 1) - 1] = f"{match[1]}def {match[2]}{signature}"


def write_sanitized_stubs(folder: Path) -> Path:
    """A copy of tensorrt-stubs that mypy can read: the generated .pyi files have signatures
    Python rejects (a parameter named `in`, a non-default argument after defaults), and the
    package has no py.typed, so mypy would otherwise treat `tensorrt` as Any."""
    source = stub_folder()
    for package in ("tensorrt", "tensorrt_bindings"):
        (folder / package).mkdir(parents=True, exist_ok=True)
        for stub in (source / package).glob("*.pyi"):
            lines = stub.read_text().splitlines()
            _parse_leniently(lines)  # rewrites the offending signatures in place
            (folder / package / stub.name).write_text("\n".join(lines) + "\n")
    return folder


@lru_cache(maxsize=1)
def load_stub_api() -> StubApi:
    folder = stub_folder()
    lines = (folder / "tensorrt_bindings" / "tensorrt.pyi").read_text().splitlines()
    tree = _parse_leniently(lines)
    own: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    enums: dict[str, dict[str, int]] = {}

    def visit(node: ast.ClassDef, prefix: str) -> None:
        name = prefix + node.name
        members: set[str] = set()
        enum_members: dict[str, int] = {}
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                members.add(item.name)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                members.add(item.target.id)
                value = re.search(r"# value = <[\w.]+: (-?\d+)>", lines[item.lineno - 1])
                if value and "ClassVar" in ast.unparse(item.annotation):
                    enum_members[item.target.id] = int(value[1])
            elif isinstance(item, ast.Assign):
                members.update(t.id for t in item.targets if isinstance(t, ast.Name))
            elif isinstance(item, ast.ClassDef):
                members.add(item.name)
                visit(item, name + ".")
        own[name] = members
        bases[name] = [ast.unparse(b) for b in node.bases]
        if "__members__" in members:
            enums[name] = enum_members

    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            visit(node, "")

    def resolve(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        members = set(own.get(name, set()))
        for base in bases.get(name, []):
            if base in own and base not in seen:
                members |= resolve(base, seen | {name})
        return members

    classes = {name: resolve(name) for name in own}
    package = ast.parse((folder / "tensorrt" / "__init__.pyi").read_text())
    module = {"__version__", "__name__"}
    for node in package.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            module |= set(ast.literal_eval(node.value))
    return StubApi(classes, enums, module)


@lru_cache(maxsize=1)
def rtx_dirs() -> dict[str, set[str]] | None:
    try:
        import tensorrt_rtx_bindings as rtx
    except ImportError:
        return None
    dirs = {"tensorrt": set(dir(rtx))}
    for name in dir(rtx):
        value = getattr(rtx, name)
        if isinstance(value, type):
            dirs[name] = set(dir(value))
            for inner in dir(value):
                if isinstance(getattr(value, inner, None), type) and not inner.startswith("_"):
                    dirs[f"{name}.{inner}"] = set(dir(getattr(value, inner)))
    return dirs


# Names Features.detect probes with hasattr: absent ones are how it tells versions apart.
DETECTION_PROBES = {
    ("tensorrt", "ComputeCapability"), ("BuilderFlag", "FP16"), ("BuilderFlag", "BF16"),
    ("BuilderFlag", "EDITABLE_TIMING_CACHE"), ("tensorrt", "TimingCacheKey"), ("tensorrt", "IAlgorithmSelector"),
    ("tensorrt", "IInt8EntropyCalibrator2"), ("tensorrt", "IDebugListener"), ("ILayer", "metadata"),
    ("INetworkDefinition", "mark_debug"), ("INetworkDefinition", "mark_unfused_tensors_as_debug_tensors"),
    ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"), ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH"),
    ("DataType", "INT64"), ("DataType", "BF16"),  # host types are looked up by name
}


# The real TensorRT 8.6 surface, against 10.13 (NVIDIA/TensorRT v8.6.1: python/src/infer/pyGraph.cpp,
# pyCore.cpp, pyFoundationalTypes.cpp): no debug tensors, editable timing cache, strong typing,
# BF16, INT64, INT4, FP4 or E8M0 (FP8 exists, "not supported yet"); but ILayer.metadata exists
# (pyGraph.cpp: def_property("metadata", ...)).
TENSORRT_8_6_LACKS = frozenset({
    ("INetworkDefinition", "mark_debug"), ("INetworkDefinition", "mark_unfused_tensors_as_debug_tensors"),
    ("tensorrt", "IDebugListener"), ("BuilderFlag", "EDITABLE_TIMING_CACHE"), ("tensorrt", "TimingCacheKey"),
    ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"), ("BuilderFlag", "BF16"), ("DataType", "BF16"),
    ("DataType", "INT64"), ("DataType", "INT4"), ("DataType", "FP4"), ("DataType", "E8M0"), ("BuilderFlag", "INT4"),
})


class Recorder:
    """Checks names against the API, records what was used and what was missed."""

    def __init__(self, rtx: bool = False, missing: frozenset[tuple[str, str]] = frozenset()):
        self.api = load_stub_api()
        self.rtx = rtx_dirs() if rtx else None
        if rtx and self.rtx is None:
            raise RuntimeError("tensorrt_rtx_bindings is needed for an RTX-checked fake")
        self.missing = missing  # names removed to simulate an older TensorRT
        self.used: set[tuple[str, str]] = set()
        self.misses: set[tuple[str, str]] = set()
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.plans: dict[bytes, PlanInfo] = {}
        self.fail_when_marked: set[str] = set()  # builds fail while any of these is marked
        self.builds = 0
        self.timing_cache_updates: list[tuple[str, int, float]] = []
        self.live_engines: weakref.WeakSet[Any] = weakref.WeakSet()  # deserialized, not yet released
        self.most_live_engines = 0
        self.ignore_cache_edits = False  # the builder re-times edited entries and keeps its fastest kernel
        self.log_autotuning = True  # verbose "Autotuning op" tables in the build log
        self.refuse_debug: set[str] = set()  # mark_debug returns False for these
        self.metadata_suffix = ""  # after the node name in layer metadata (" | Local Function: f")
        self.kernel_prefix = ""  # put before every kernel name (real ones run past 128 characters)
        self.no_half_kernel: set[str] = set()  # layers that run FP32 in an FP16 build, silently

    def allows(self, owner: str, name: str) -> bool:
        if (owner, name) in self.missing or not self.api.has(owner, name):
            return False
        return self.rtx is None or name in self.rtx.get(owner, set())

    def check(self, owner: str, name: str) -> None:
        if self.allows(owner, name):
            self.used.add((owner, name))
            return
        self.misses.add((owner, name))
        raise AttributeError(f"{owner}.{name} is not in the TensorRT API being faked")

    def call(self, owner: str, name: str, *args: Any) -> None:
        self.calls.append((owner, name, args))

    def called(self, owner: str, name: str) -> list[tuple[Any, ...]]:
        return [args for o, n, args in self.calls if (o, n) == (owner, name)]


CURRENT: Recorder | None = None


def recorder() -> Recorder:
    assert CURRENT is not None, "no fake TensorRT is active"
    return CURRENT


# ---------------------------------------------------------------------------------------------
# Checked objects
# ---------------------------------------------------------------------------------------------

def _user_defined(cls: type, name: str) -> bool:
    """Defined by the code under test (a subclass of a fake class), not by the fake."""
    return any(name in k.__dict__ for k in cls.__mro__ if "_stub" not in k.__dict__ and k is not object)


class CheckedMeta(type):
    def __getattribute__(cls, name: str) -> Any:
        if not name.startswith("_") and not _user_defined(cls, name):
            recorder().check(type.__getattribute__(cls, "_stub"), name)
        return type.__getattribute__(cls, name)


class Checked(metaclass=CheckedMeta):
    _stub = "object"

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            cls = object.__getattribute__(self, "__class__")
            if name not in object.__getattribute__(self, "__dict__") and not _user_defined(cls, name):
                recorder().check(cls._stub, name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and not _user_defined(type(self), name) and not _is_user_instance(self):
            recorder().check(type(self)._stub, name)
            recorder().call(type(self)._stub, f"set {name}", value)
        object.__setattr__(self, name, value)


def _is_user_instance(obj: Any) -> bool:
    return "_stub" not in type(obj).__dict__


class EnumValue:
    def __init__(self, enum: str, name: str, value: int):
        self._enum, self._name, self._value = enum, name, value

    @property
    def name(self) -> str:
        return self._name

    def __int__(self) -> int:
        return self._value

    __index__ = __int__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumValue) and (other._enum, other._name) == (self._enum, self._name)

    def __hash__(self) -> int:
        return hash((self._enum, self._name))

    def __le__(self, other: EnumValue) -> bool:
        return self._value <= other._value

    def __repr__(self) -> str:
        return f"<{self._enum}.{self._name}: {self._value}>"


class EnumNamespace:
    """An enum class of the fake module: members from the stubs, checked on access."""

    def __init__(self, name: str):
        self._name = name
        self._members = {m: EnumValue(name.split(".")[-1], m, value)
                         for m, value in load_stub_api().enums.get(name, {}).items()}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        recorder().check(self._name, name)
        if name == "__members__":
            return dict(self._members)
        return self._members[name]

    @property
    def __members__(self) -> dict[str, EnumValue]:
        return {n: v for n, v in self._members.items() if recorder().allows(self._name, n)}


def enum(name: str) -> EnumNamespace:
    return EnumNamespace(name)


DataType = enum("DataType")
LayerType = enum("LayerType")
BuilderFlag = enum("BuilderFlag")
TensorIOMode = enum("TensorIOMode")
TensorLocation = enum("TensorLocation")
SEVERITY = enum("ILogger.Severity")

NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
               "BOOL": np.bool_, "UINT8": np.uint8}
ONNX_TO_DATATYPE = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT64: "INT64",
                    onnx.TensorProto.INT32: "INT32", onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.INT8: "INT8",
                    onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.BFLOAT16: "BF16",
                    # QuantizeLinear outputs of FP8 / INT4 Q/DQ models, typed as TensorRT-RTX 1.7's parser
                    # types them (DataType.FP8, DataType.INT4; seen on real parses of fixtures.float_qdq_models)
                    onnx.TensorProto.FLOAT8E4M3FN: "FP8", onnx.TensorProto.INT4: "INT4"}


def dt(name: str) -> EnumValue:
    return DataType._members[name]


# ---------------------------------------------------------------------------------------------
# Callback bases the code under test subclasses
# ---------------------------------------------------------------------------------------------

class ILogger(Checked):
    _stub = "ILogger"
    INTERNAL_ERROR = SEVERITY._members["INTERNAL_ERROR"]
    ERROR = SEVERITY._members["ERROR"]
    WARNING = SEVERITY._members["WARNING"]
    INFO = SEVERITY._members["INFO"]
    VERBOSE = SEVERITY._members["VERBOSE"]

    def __init__(self) -> None:
        recorder().call("ILogger", "__init__")

    def log(self, severity: Any, msg: str) -> None:
        raise NotImplementedError("ILogger.log is pure virtual")


class IAlgorithmSelector(Checked):
    _stub = "IAlgorithmSelector"

    def __init__(self) -> None:
        recorder().call("IAlgorithmSelector", "__init__")

    def select_algorithms(self, context: Any, choices: list[Any]) -> list[int]:
        raise NotImplementedError("select_algorithms is pure virtual")

    def report_algorithms(self, contexts: list[Any], choices: list[Any]) -> None:
        raise NotImplementedError("report_algorithms is pure virtual")


class IInt8EntropyCalibrator2(Checked):
    _stub = "IInt8EntropyCalibrator2"

    def __init__(self) -> None:
        recorder().call("IInt8EntropyCalibrator2", "__init__")

    def get_batch_size(self) -> int:
        raise NotImplementedError

    def get_batch(self, names: list[str]) -> list[int] | None:
        raise NotImplementedError

    def read_calibration_cache(self) -> Any:
        raise NotImplementedError

    def write_calibration_cache(self, cache: Any) -> None:
        raise NotImplementedError


class IInt8MinMaxCalibrator(IInt8EntropyCalibrator2):
    _stub = "IInt8MinMaxCalibrator"

    def __init__(self) -> None:
        recorder().call("IInt8MinMaxCalibrator", "__init__")


class IDebugListener(Checked):
    _stub = "IDebugListener"

    def __init__(self) -> None:
        recorder().call("IDebugListener", "__init__")

    def process_debug_tensor(self, addr: int, location: Any, type: Any, shape: Any, name: str, stream: int) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

class ITensor(Checked):
    _stub = "ITensor"

    def __init__(self, name: str, dtype: EnumValue, shape: tuple[int, ...], shape_tensor: bool = False):
        self._name, self._dtype, self._shape = name, dtype, shape
        self._input = self._output = self._debug = False
        self._shape_tensor = shape_tensor

    name = property(lambda self: self._name)
    shape = property(lambda self: self._shape)
    is_network_input = property(lambda self: self._input)
    is_network_output = property(lambda self: self._output)
    is_shape_tensor = property(lambda self: self._shape_tensor)

    @property
    def dtype(self) -> EnumValue:
        return self._dtype

    @dtype.setter
    def dtype(self, value: EnumValue) -> None:
        recorder().call("ITensor", "dtype", self._name, value)
        self._dtype = value


class ILayer(Checked):
    _stub = "ILayer"

    def __init__(self, name: str, kind: str, nodes: list[str], outputs: list[ITensor], inputs: list[str]):
        self._name, self._type, self._outputs, self._inputs = name, LayerType._members[kind], outputs, inputs
        self._metadata = "".join(f"[ONNX Layer: {n}{recorder().metadata_suffix}]" for n in nodes)
        self._precision: EnumValue | None = None
        self._output_types: dict[int, EnumValue] = {}

    name = property(lambda self: self._name)
    type = property(lambda self: self._type)
    metadata = property(lambda self: self._metadata)
    num_outputs = property(lambda self: len(self._outputs))

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    @property
    def precision(self) -> EnumValue | None:
        return self._precision

    @precision.setter
    def precision(self, value: EnumValue) -> None:
        recorder().call("ILayer", "precision", self._name, value)
        self._precision = value

    def set_output_type(self, index: int, dtype: EnumValue) -> None:
        recorder().call("ILayer", "set_output_type", self._name, index, dtype)
        self._output_types[index] = dtype


ONNX_LAYER_TYPES = {"Conv": "CONVOLUTION", "Relu": "ACTIVATION", "Sigmoid": "ACTIVATION", "Add": "ELEMENTWISE",
                    "Mul": "ELEMENTWISE", "Sub": "ELEMENTWISE", "Reshape": "SHUFFLE", "Flatten": "SHUFFLE",
                    "Shape": "SHAPE", "Concat": "CONCATENATION", "GlobalAveragePool": "REDUCE",
                    "BatchNormalization": "SCALE", "Cast": "CAST", "Constant": "CONSTANT",
                    "MatMul": "MATRIX_MULTIPLY", "Identity": "IDENTITY", "QuantizeLinear": "QUANTIZE",
                    "DequantizeLinear": "DEQUANTIZE"}
SHAPE_VALUE_OPS = ("Reshape", "Expand", "Tile", "ConstantOfShape")
COMPUTE_TYPES = ("CONVOLUTION", "MATRIX_MULTIPLY", "ELEMENTWISE", "ACTIVATION", "SCALE", "REDUCE")


class INetworkDefinition(Checked):
    _stub = "INetworkDefinition"

    def __init__(self, flags: int):
        self._flags = flags
        self._layers: list[ILayer] = []
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._proto: onnx.ModelProto | None = None
        self._unfused = False

    num_layers = property(lambda self: len(self._layers))
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_layer(self, index: int) -> ILayer:
        return self._layers[index]

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    def mark_output(self, tensor: ITensor) -> None:
        recorder().call("INetworkDefinition", "mark_output", tensor.name)
        tensor._output = True
        self._outputs.append(tensor)

    def mark_debug(self, tensor: ITensor) -> bool:
        recorder().call("INetworkDefinition", "mark_debug", tensor.name)
        if tensor.name in recorder().refuse_debug:
            return False
        tensor._debug = True
        return True

    def mark_unfused_tensors_as_debug_tensors(self) -> bool:
        recorder().call("INetworkDefinition", "mark_unfused_tensors_as_debug_tensors")
        self._unfused = True
        return True

    def _populate(self, proto: onnx.ModelProto) -> None:
        """One layer per node (a Gemm: matrix multiply + bias add), tensors typed from ONNX."""
        self._proto = proto
        inferred = onnx.shape_inference.infer_shapes(proto)
        types = {vi.name: vi.type.tensor_type for vi in [*inferred.graph.value_info, *inferred.graph.input,
                                                         *inferred.graph.output]}
        initializers = {i.name for i in proto.graph.initializer}

        def tensor(name: str, shape_tensor: bool = False) -> ITensor:
            tt = types.get(name)
            kind = ONNX_TO_DATATYPE.get(tt.elem_type, "FLOAT") if tt else "FLOAT"
            if kind == "INT64" and not recorder().allows("DataType", "INT64"):
                kind = "INT32"  # TensorRT 8.6 has no INT64: its parser casts INT64 to INT32
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim) if tt else ()
            return ITensor(name, dt(kind), shape, shape_tensor)

        # A graph input whose values set a shape (Reshape's second input) is a shape tensor.
        shape_inputs = {n.input[1] for n in proto.graph.node if n.op_type in SHAPE_VALUE_OPS and len(n.input) > 1}
        for graph_input in proto.graph.input:
            if graph_input.name not in initializers:
                t = tensor(graph_input.name, shape_tensor=graph_input.name in shape_inputs)
                t._input = True
                self._inputs.append(t)
        for node in proto.graph.node:
            inputs = [i for i in node.input if i and i not in initializers]
            if node.op_type == "Gemm":
                inner = ITensor(f"{node.name}_output", dt("FLOAT"), ())
                self._layers.append(ILayer(node.name, "MATRIX_MULTIPLY", [node.name], [inner], inputs))
                self._layers.append(ILayer(f"{node.name}_0", "ELEMENTWISE", [node.name],
                                           [tensor(node.output[0])], [inner.name]))
                continue
            kind = ONNX_LAYER_TYPES.get(node.op_type, "UNARY")
            outputs = [tensor(o, shape_tensor=kind == "SHAPE") for o in node.output]
            self._layers.append(ILayer(node.name, kind, [node.name], outputs, inputs))
        by_name = {t.name: t for layer in self._layers for t in layer._outputs}
        for graph_output in proto.graph.output:
            self.mark_output(by_name[graph_output.name])


class OnnxParser(Checked):
    _stub = "OnnxParser"

    def __init__(self, network: INetworkDefinition, logger: Any):
        self._network = network
        self._errors: list[str] = []

    def parse(self, model: bytes, path: str | None = None) -> bool:
        recorder().call("OnnxParser", "parse")
        proto = onnx.load_from_string(model)
        if any(n.op_type == "Unsupported" for n in proto.graph.node):
            self._errors.append("In node 0 (importModel): UNSUPPORTED_NODE: No importer for op Unsupported")
            return False
        self._network._populate(proto)
        return True

    def parse_from_file(self, path: str) -> bool:
        return self.parse(Path(path).read_bytes())

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> str:
        return self._errors[index]


# ---------------------------------------------------------------------------------------------
# Builder, config, profiles, timing cache, algorithm selection
# ---------------------------------------------------------------------------------------------

class IOptimizationProfile(Checked):
    _stub = "IOptimizationProfile"

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[Any, Any, Any]] = {}
        self._values: dict[str, tuple[Any, Any, Any]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        recorder().call("IOptimizationProfile", "set_shape", input, tuple(min), tuple(opt), tuple(max))
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))

    def set_shape_input(self, input: str, min: Any, opt: Any, max: Any) -> None:
        recorder().call("IOptimizationProfile", "set_shape_input", input, tuple(min), tuple(opt), tuple(max))
        self._values[input] = (tuple(min), tuple(opt), tuple(max))


class TimingCacheKey(Checked):
    _stub = "TimingCacheKey"

    def __init__(self, text: str):
        self._text = text

    @staticmethod
    def parse(text: str) -> TimingCacheKey:
        if len(text) != 34 or not text.startswith("0x"):
            raise ValueError(f"invalid timing cache key {text!r}")
        return TimingCacheKey(text.lower())

    def __str__(self) -> str:
        return self._text


class TimingCacheValue(Checked):
    _stub = "TimingCacheValue"

    def __init__(self, arg0: int, arg1: float):
        self._hash, self._ms = int(arg0), float(arg1)

    tacticHash = property(lambda self: self._hash)
    timingMSec = property(lambda self: self._ms)


class ITimingCache(Checked):
    _stub = "ITimingCache"

    def __init__(self) -> None:
        self._entries: dict[str, TimingCacheValue] = {}

    def queryKeys(self) -> list[TimingCacheKey]:
        return [TimingCacheKey(k) for k in self._entries]

    def query(self, key: TimingCacheKey) -> TimingCacheValue:
        return self._entries.get(str(key), TimingCacheValue(2**64 - 1, -1.0))

    def update(self, key: TimingCacheKey, value: TimingCacheValue) -> bool:
        if str(key) not in self._entries:
            return False
        recorder().timing_cache_updates.append((str(key), value.tacticHash, value.timingMSec))
        self._entries[str(key)] = value
        return True

    def serialize(self) -> bytes:
        return json.dumps({k: v.tacticHash for k, v in self._entries.items()}).encode()


class IBuilderConfig(Checked):
    _stub = "IBuilderConfig"

    def __init__(self) -> None:
        self._flags: set[str] = {"TF32"}
        self._profiles: list[IOptimizationProfile] = []
        self._selector: Any = None
        self._calibrator: Any = None
        self._calibration_profile: Any = None
        self._cache: ITimingCache | None = None
        self._verbosity: Any = None

    def set_flag(self, flag: EnumValue) -> None:
        recorder().call("IBuilderConfig", "set_flag", flag.name)
        self._flags.add(flag.name)

    def clear_flag(self, flag: EnumValue) -> None:
        recorder().call("IBuilderConfig", "clear_flag", flag.name)
        self._flags.discard(flag.name)

    def get_flag(self, flag: EnumValue) -> bool:
        return flag.name in self._flags

    profiling_verbosity = property(lambda self: self._verbosity,
                                   lambda self, value: setattr(self, "_verbosity", value))
    algorithm_selector = property(lambda self: self._selector, lambda self, value: setattr(self, "_selector", value))
    int8_calibrator = property(lambda self: self._calibrator,
                               lambda self, value: setattr(self, "_calibrator", value))

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self._calibration_profile = profile
        return True

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        recorder().call("IBuilderConfig", "set_memory_pool_limit", pool, pool_size)

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache()

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._cache = cache
        return True


class IHostMemory(bytes):
    """Serialized plans: bytes, so memoryview works as on the real IHostMemory."""


@dataclass
class PlanInfo:
    proto: onnx.ModelProto
    outputs: list[tuple[str, str]]  # (name, DataType name), network outputs in order
    inputs: list[tuple[str, str]]
    debug: list[str]
    unfused: bool
    layers: list[dict[str, Any]] = field(default_factory=list)
    host_outputs: set[str] = field(default_factory=set)  # shape tensors marked as outputs
    shape_inputs: set[str] = field(default_factory=set)  # shape-tensor inputs (host memory)
    data_dependent: set[str] = field(default_factory=set)  # outputs of shape -1 until run (NonZero)
    profile: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)  # profile 0: min/opt/max shapes


def tactic_table(index: int, name: str, calibration: bool = False) -> list[tuple[str, str, float]]:
    """Three tactics per compute layer, fastest first: (hash, kernel, milliseconds). The FP32
    calibration network of implicit INT8 has tactics of its own."""
    base = 0x1000 * (index + 1) + (0x100000 if calibration else 0)
    prefix = recorder().kernel_prefix + ("calibration_" if calibration else "")
    return [(f"{base + k:#x}", f"{prefix}sm80_kernel_{name}_{'abc'[k]}", 0.01 * (k + 1)) for k in range(3)]


class Builder(Checked):
    _stub = "Builder"

    def __init__(self, logger: Any):
        self._logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        recorder().call("Builder", "create_network", flags)
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _log(self, severity: str, message: str) -> None:
        self._logger.log(SEVERITY._members[severity], message)

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        rec = recorder()
        rec.builds += 1
        marked = {t.name for t in network._outputs} | {t.name for layer in network._layers for t in layer._outputs
                                                          if t._debug}
        poisoned = sorted(marked & rec.fail_when_marked)
        if poisoned:
            self._log("ERROR", f"[ShapeHostToDeviceCopy 0] requires bool or uint8 I/O ({poisoned[0]})")
            return None
        if "OBEY_PRECISION_CONSTRAINTS" in config._flags and any(
                layer._precision is not None and layer.type == LayerType._members["ACTIVATION"]
                and layer._precision == dt("FLOAT") for layer in network._layers):
            self._log("ERROR", "No implementation of layer obeys the requested constraints in strict mode")
            return None
        missing = [t.name for t in network._inputs if t._shape_tensor
                   and not any(t.name in p._values for p in config._profiles)]
        if missing:  # as TensorRT-RTX reports it (IBuilder::buildSerializedNetwork, Error Code 4)
            self._log("ERROR", f"Optimization profile 0 is missing values for shape input tensor {missing[0]}.")
            return None
        if config._calibrator is not None and not self._calibrate(config._calibrator, network, config):
            # As TensorRT reports a calibration that saw no data (and had no cache to read).
            self._log("ERROR", "Calibration failure occurred with no scaling factors detected.")
            return None
        chosen = self._choose_tactics(network, config)
        return self._plan(network, config, chosen)

    def _calibrate(self, calibrator: Any, network: INetworkDefinition, config: IBuilderConfig) -> bool:
        """TensorRT reads the cache first and calibrates only without one; False: no scales."""
        names = [t.name for t in network._inputs]
        calibrator.get_batch_size()
        if calibrator.read_calibration_cache():
            recorder().call("IInt8EntropyCalibrator2", "cache_read")
            return True
        self._choose_tactics(network, config, calibration=True)  # the calibration network is built first
        batches = 0
        while True:
            pointers = calibrator.get_batch(names)
            if not pointers:
                break
            batches += 1
            recorder().call("IInt8EntropyCalibrator2", "batch", tuple(pointers))
        if not batches:
            return False
        calibrator.write_calibration_cache(b"calibration-cache")
        return True

    def _choose_tactics(self, network: INetworkDefinition, config: IBuilderConfig,
                        calibration: bool = False) -> dict[str, str]:
        compute = [(i, layer) for i, layer in enumerate(network._layers) if layer.type.name in COMPUTE_TYPES]
        chosen: dict[str, str] = {}

        if config._selector is not None:
            contexts, picks = [], []
            for i, layer in compute:
                table = tactic_table(i, layer.name, calibration)
                choices = [IAlgorithm(i + 1, int(h, 16), ms) for h, _, ms in table]
                indices = config._selector.select_algorithms(IAlgorithmContext(layer.name), choices)
                assert isinstance(indices, list) and indices and all(0 <= k < len(choices) for k in indices)
                pick = choices[min(indices)]  # the fastest allowed
                contexts.append(IAlgorithmContext(layer.name))
                picks.append(pick)
                chosen[layer.name] = table[choices.index(pick)][1]
            config._selector.report_algorithms(contexts, picks)
        elif "EDITABLE_TIMING_CACHE" in config._flags and config._cache is not None:
            for i, layer in compute:
                key = f"0x{(0xabc0 + i + (0xca100 if calibration else 0)):032x}"
                table = tactic_table(i, layer.name, calibration)
                cached = config._cache._entries.get(key)
                if cached is not None and recorder().ignore_cache_edits:
                    cached = None  # TensorRT ignores the edit: times again, picks the fastest
                if cached is None and not recorder().log_autotuning:
                    config._cache._entries[key] = TimingCacheValue(int(table[0][0], 16), table[0][2])
                elif cached is None:
                    self._log("VERBOSE", f"Autotuning op {layer.name}(key: {key}):")
                    self._log("VERBOSE", "Sorted table of all evaluated tactics:")
                    self._log("VERBOSE", "tactic_id, cost(in ms), cost/fastest_cost, prediction_correlation, "
                                         "kernel_name, tactic_hash, tunable_parameter")
                    for k, (h, kernel, ms) in enumerate(table):
                        self._log("VERBOSE", f"   {k}, {ms:.7f}, {ms / table[0][2]:.5f}, 0.5, {kernel}, {h},")
                    self._log("VERBOSE", f"The selected tactic is (tactic hash, cost(in ms)):{table[0][0]},  "
                                         f"{table[0][2]}")
                    config._cache._entries[key] = TimingCacheValue(int(table[0][0], 16), table[0][2])
                hash_value = config._cache._entries[key].tacticHash
                chosen[layer.name] = next((kernel for h, kernel, _ in table if int(h, 16) == hash_value), "?")
        return chosen

    def _plan(self, network: INetworkDefinition, config: IBuilderConfig, chosen: dict[str, str]) -> IHostMemory:
        half = "FP16" in config._flags
        layers = []
        for layer in network._layers:
            float_out = layer._precision == dt("FLOAT") or not half or layer.name in recorder().no_half_kernel
            datatype = "Float" if float_out or layer.type.name in ("SHAPE",) else "Half"
            text = f"Row major linear {'FP32' if datatype == 'Float' else 'FP16'}"
            codes = {"INT8": "Int8", "FP8": "FP8", "INT4": "Int4"}  # a QuantizeLayer's output keeps its code type
            outputs = [{"Name": t.name, "Format/Datatype": f"Row major linear {codes[t.dtype.name]}"
                        if layer.type.name == "QUANTIZE" and t.dtype.name in codes else text} for t in layer._outputs]
            layers.append({"Name": layer.name, "LayerType": layer.type.name, "Outputs": outputs,
                           "TacticName": chosen.get(layer.name, ""), "Metadata": layer._metadata.replace(
                               "][", "]\x1e[")})
        lines = ["Layers:"] + [
            f"Name: {la['Name']}, LayerType: {la['LayerType']}, Inputs: [], Outputs: ["
            + ", ".join(f"{{ Name: {o['Name']}, Dimensions: [1], Datatype: {o['Format/Datatype'].split()[-1]} }}"
                        for o in la["Outputs"])
            + f"], TacticName: {la['TacticName']}, StreamId: 0, Metadata: {la['Metadata']}" for la in layers]
        self._log("VERBOSE", "\n".join(lines) + "\n\nI/O Tensors:\n")
        recorder().build_flags = set(config._flags)
        plan = IHostMemory(f"fake-plan-{recorder().builds}".encode())
        recorder().plans[bytes(plan)] = PlanInfo(
            network._proto or onnx.ModelProto(),
            [(t.name, t.dtype.name) for t in network._outputs], [(t.name, t.dtype.name) for t in network._inputs],
            [t.name for layer in network._layers for t in layer._outputs if t._debug], network._unfused, layers,
            {t.name for t in network._outputs if t.is_shape_tensor},
            {t.name for t in network._inputs if t._shape_tensor},
            {t.name for t in network._outputs if any(d < 0 for d in t._shape)}
            if all(d >= 0 for t in network._inputs for d in t._shape) else set(),
            dict(config._profiles[0]._shapes) if config._profiles else {})
        return plan


class IAlgorithmVariant(Checked):
    _stub = "IAlgorithmVariant"

    def __init__(self, implementation: int, tactic: int):
        self._implementation, self._tactic = implementation, tactic

    implementation = property(lambda self: self._implementation)
    tactic = property(lambda self: self._tactic)


class IAlgorithm(Checked):
    _stub = "IAlgorithm"

    def __init__(self, implementation: int, tactic: int, ms: float):
        self._variant = IAlgorithmVariant(implementation, tactic)
        self._ms = ms

    algorithm_variant = property(lambda self: self._variant)
    timing_msec = property(lambda self: self._ms)


class IAlgorithmContext(Checked):
    _stub = "IAlgorithmContext"

    def __init__(self, name: str):
        self._name = name

    name = property(lambda self: self._name)
    num_inputs = property(lambda self: 1)
    num_outputs = property(lambda self: 1)


# ---------------------------------------------------------------------------------------------
# Runtime: engines run with onnxruntime, memory through the fake cuda-python below
# ---------------------------------------------------------------------------------------------

class Runtime(Checked):
    _stub = "Runtime"

    def __init__(self, logger: Any):
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        info = recorder().plans.get(bytes(serialized_engine))
        if info is None:
            return None
        engine, rec = ICudaEngine(info), recorder()
        rec.live_engines.add(engine)
        rec.most_live_engines = max(rec.most_live_engines, len(rec.live_engines))
        return engine


class EngineInspector(Checked):
    _stub = "EngineInspector"

    def __init__(self, info: PlanInfo):
        self._info = info

    def get_engine_information(self, format: Any) -> str:
        return json.dumps({"Layers": self._info.layers, "Bindings": []})


class ICudaEngine(Checked):
    _stub = "ICudaEngine"

    def __init__(self, info: PlanInfo):
        self._info = info
        self._io = [(n, t, "INPUT") for n, t in info.inputs] + [(n, t, "OUTPUT") for n, t in info.outputs]

    num_io_tensors = property(lambda self: len(self._io))
    num_layers = property(lambda self: len(self._info.layers))

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def _entry(self, name: str) -> tuple[str, str, str]:
        return next(e for e in self._io if e[0] == name)

    def get_tensor_mode(self, name: str) -> EnumValue:
        return TensorIOMode._members[self._entry(name)[2]]

    def get_tensor_dtype(self, name: str) -> EnumValue:
        return dt(self._entry(name)[1])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        assert profile_index == 0, "the fake's engines have one profile"
        return list(self._info.profile[name])

    def is_shape_inference_io(self, name: str) -> bool:
        return name in self._info.shape_inputs or name in self._info.host_outputs

    def get_tensor_location(self, name: str) -> EnumValue:
        # Shape-tensor inputs and outputs live on the host, as in TensorRT.
        on_host = name in self._info.host_outputs or name in self._info.shape_inputs
        return TensorLocation._members["HOST" if on_host else "DEVICE"]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self._info)


class UncomputedDims:
    """Dims{-1, {}}: a shape TensorRT could not compute. pybind's Dims.__len__ returns nbDims, so
    len() of it raises ValueError as here."""

    def __len__(self) -> int:
        return -1


class IExecutionContext(Checked):
    _stub = "IExecutionContext"

    def __init__(self, engine: ICudaEngine):
        self._engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._listener: Any = None
        self._allocators: dict[str, Any] = {}
        self._all_debug = False
        self._unfused = False

    def set_input_shape(self, name: str, shape: Any) -> bool:
        self._shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._addresses[name] = int(memory)
        return True

    def _values(self) -> dict[str, np.ndarray]:
        info = self._engine._info
        feeds = {}
        for name, kind in info.inputs:
            array = np.empty(self._shapes[name], dtype=NUMPY_TYPES[kind])
            ctypes.memmove(array.ctypes.data, self._addresses[name], array.nbytes)
            feeds[name] = array
        produced = [o for n in info.proto.graph.node for o in n.output if o]
        session = ort_sessions.session(ort_sessions.with_outputs(info.proto, produced))
        return ort_sessions.run(session, feeds)

    def get_tensor_shape(self, name: str) -> Any:
        if name in self._shapes:
            return self._shapes[name]
        try:
            values = self._values()
        except Exception:  # the inputs' shapes or values do not fit the network (a Reshape's target)
            return UncomputedDims()
        if name in self._engine._info.data_dependent:  # known only after the run, as in TensorRT
            return tuple(-1 for _ in values[name].shape)
        return tuple(values[name].shape)

    def infer_shapes(self) -> list[str]:
        """As pyCore.cpp's infer_shapes: RuntimeError for "other errors" (a negative dimension)."""
        try:
            self._values()
        except Exception:
            raise RuntimeError("infer_shapes error code: -1") from None
        return []

    def set_output_allocator(self, name: str, output_allocator: Any) -> bool:
        self._allocators[name] = output_allocator
        return True

    def set_debug_listener(self, listener: Any) -> bool:
        self._listener = listener
        return True

    def set_all_tensors_debug_state(self, flag: bool) -> bool:
        self._all_debug = flag
        return True

    unfused_tensors_debug_state = property(lambda self: self._unfused,
                                           lambda self, value: setattr(self, "_unfused", value))

    def execute_async_v3(self, stream_handle: int) -> bool:
        values = self._values()
        for name, kind in self._engine._info.outputs:
            array = np.ascontiguousarray(values[name].astype(NUMPY_TYPES[kind]))
            if name in self._engine._info.data_dependent:  # TensorRT: reallocate, write, notify_shape
                allocator = self._allocators.get(name)
                if allocator is None or name in self._addresses:
                    return False  # TensorRT: an output of unknown shape needs an IOutputAllocator
                pointer = allocator.reallocate_output(name, 0, array.nbytes, 256)
                ctypes.memmove(pointer, array.ctypes.data, array.nbytes)
                allocator.notify_shape(name, array.shape)
                continue
            ctypes.memmove(self._addresses[name], array.ctypes.data, array.nbytes)
        if self._listener is not None:
            names = list(self._engine._info.debug) if self._all_debug else []
            if self._unfused and self._engine._info.unfused:
                names += [n for n in values if n not in names] + ["__myl_internal_tensor"]
            for index, name in enumerate(names):
                value = np.ascontiguousarray(values.get(name, np.zeros(2, np.float32)).astype(np.float32))
                # Real engines hand most debug tensors over in device memory, some (shape tensors) on the
                # host: alternate, so the listener's copy from the device is exercised too.
                if index % 2 == 0:
                    self._listener.process_debug_tensor(value.ctypes.data, TensorLocation._members["HOST"],
                                                        dt("FLOAT"), value.shape, name, stream_handle)
                    continue
                device = ctypes.create_string_buffer(value.nbytes)  # "device" memory the fake cudart copies
                ctypes.memmove(device, value.ctypes.data, value.nbytes)
                value[...] = np.nan  # what the listener reads must come from the device buffer
                self._listener.process_debug_tensor(ctypes.addressof(device), TensorLocation._members["DEVICE"],
                                                    dt("FLOAT"), value.shape, name, stream_handle)
        return True


# ---------------------------------------------------------------------------------------------
# The module object, and a fake cuda-python runtime
# ---------------------------------------------------------------------------------------------

class FakeTensorRT:
    """Stands in for `import tensorrt` (in sys.modules)."""

    __name__ = "tensorrt"
    __version__ = "10.13.0.35"

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("__"):
            recorder().check("tensorrt", name)
        return object.__getattribute__(self, name)


_CLASSES = {"ILogger": ILogger, "IAlgorithmSelector": IAlgorithmSelector,
            "IInt8EntropyCalibrator2": IInt8EntropyCalibrator2, "IInt8MinMaxCalibrator": IInt8MinMaxCalibrator,
            "IDebugListener": IDebugListener,
            "Builder": Builder, "OnnxParser": OnnxParser, "Runtime": Runtime, "ITimingCache": ITimingCache,
            "TimingCacheKey": TimingCacheKey, "TimingCacheValue": TimingCacheValue, "ILayer": ILayer,
            "INetworkDefinition": INetworkDefinition, "ITensor": ITensor, "IBuilderConfig": IBuilderConfig,
            "ICudaEngine": ICudaEngine, "IExecutionContext": IExecutionContext, "EngineInspector": EngineInspector}
for _name, _value in _CLASSES.items():
    setattr(FakeTensorRT, _name, _value)
for _name in load_stub_api().enums:
    if "." not in _name:
        setattr(FakeTensorRT, _name, enum(_name))
for _name in load_stub_api().module - set(vars(FakeTensorRT)) - {"__name__", "__version__"}:
    # Everything else the stubs have exists, but the code under test must not need it.
    setattr(FakeTensorRT, _name, type(_name, (Checked,), {"_stub": _name}))


def activate(rtx: bool = False, missing: frozenset[tuple[str, str]] = frozenset()) -> tuple[FakeTensorRT, Recorder]:
    global CURRENT
    CURRENT = Recorder(rtx=rtx, missing=missing)
    return FakeTensorRT(), CURRENT


class FakeStream:
    _next = 1

    def __init__(self) -> None:
        self.handle = FakeStream._next
        FakeStream._next += 1

    def __int__(self) -> int:
        return self.handle


def get_cuda_native_handle(stream: Any) -> int:
    """`cuda.bindings.utils.get_cuda_native_handle` for the fake's streams; like the real one, it
    refuses an object it does not know."""
    if not isinstance(stream, FakeStream):
        raise TypeError(f"Unknown type: {type(stream)}")
    return stream.handle


class FakeCudart:
    """cuda-python's runtime module, with device memory in host memory (ctypes buffers)."""

    class cudaError_t:  # noqa: N801 - cuda-python's names
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    cudaStreamNonBlocking = 1
    NAMES = {0: b"cudaSuccess", 1: b"cudaErrorInvalidValue", 2: b"cudaErrorMemoryAllocation"}

    def __init__(self, limit: int = 1 << 30):
        self.limit = limit
        self.buffers: dict[int, Any] = {}
        self.streams: set[int] = set()
        self.freed: list[int] = []
        self.copies: list[tuple[int, int]] = []

    def cudaMalloc(self, size: int) -> tuple[int, int]:  # noqa: N802
        if size > self.limit:
            return (self.cudaError_t.cudaErrorMemoryAllocation, 0)
        buffer = ctypes.create_string_buffer(size)
        pointer = ctypes.addressof(buffer)
        self.buffers[pointer] = buffer
        return (0, pointer)

    def cudaFree(self, pointer: int) -> tuple[int]:  # noqa: N802
        if pointer not in self.buffers:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        del self.buffers[pointer]
        self.freed.append(pointer)
        return (0,)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[int, FakeStream]:  # noqa: N802
        stream = FakeStream()
        self.streams.add(int(stream))
        return (0, stream)

    def cudaStreamDestroy(self, stream: Any) -> tuple[int]:  # noqa: N802
        self.streams.discard(int(stream))
        return (0,)

    def cudaStreamSynchronize(self, stream: Any) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: int, stream: Any) -> tuple[int]:  # noqa: N802
        self.copies.append((kind, count))
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaGetErrorName(self, error: int) -> tuple[int, bytes]:  # noqa: N802
        return (0, self.NAMES.get(error, b"cudaErrorUnknown"))

    def cudaGetErrorString(self, error: int) -> tuple[int, bytes]:  # noqa: N802
        return (0, b"out of memory" if error == 2 else b"invalid argument")

    def cudaGetDeviceCount(self) -> tuple[int, int]:  # noqa: N802
        return (0, 1)

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, Any]:  # noqa: N802
        class Props:
            name = b"Fake GPU H200"
            major, minor = 9, 0
        return (0, Props())

    def cudaDriverGetVersion(self) -> tuple[int, int]:  # noqa: N802
        return (0, 12080)

    def cudaRuntimeGetVersion(self) -> tuple[int, int]:  # noqa: N802
        return (0, 12060)

    def cudaMemGetInfo(self) -> tuple[int, int, int]:  # noqa: N802
        used = sum(ctypes.sizeof(b) for b in self.buffers.values())
        return (0, self.limit - used, self.limit)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
