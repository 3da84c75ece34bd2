"""Engine layers -> the ONNX nodes they cover, from what TensorRT reports about a built engine.

Sources, best first:
- the engine inspector's JSON (ProfilingVerbosity.DETAILED): per layer Name, LayerType, Inputs,
  Outputs, TacticName/TacticValue and Metadata, whose "[ONNX Layer: name]" members are joined by
  \\x1E (fused Myelin layers use \\x1F between the members they cover);
- the same information as one line per layer ("Name: ..., LayerType: ..., TacticName: ...,
  Metadata: ..."), which the inspector's ONELINE format and the builder's verbose log ("Layers:")
  print; TensorRT-RTX builds on a CPU-only machine have only the log;
- the fused layer name itself ("conv1 + PWN(relu1)", "{ForeignNode[a...b]}") for engines built
  without metadata (TensorRT 8.6).
Layer names are never used to match tensors: outputs are matched by tensor name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trtdebug.engines.base import LayerInfo
from trtdebug.errors import UserError

ONNX_LAYER = re.compile(r"\[ONNX Layer: (.*?)\](?=[\x1e\x1f]|\[ONNX Layer: |\s*$)", re.DOTALL)
FOREIGN_NODE = re.compile(r"^\{?ForeignNode\[(?P<first>.*?)\.\.\.(?P<last>.*)\]\}?$")
CALL_SITE = re.compile(r"(?P<node>.+) \((?P<function>[^()]+)\)")
MYELIN_SUFFIX = re.compile(r"_myl\d+_\d+$")
NAME_SEPARATORS = re.compile(r" \+ |, |PWN\(|\)")


@dataclass
class EngineLayer:
    """One layer as an engine reports it, before mapping to ONNX nodes."""

    name: str
    layer_type: str = ""
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (tensor, datatype text)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    tactic_name: str = ""
    tactic_value: str = ""
    metadata: str = ""


def metadata_nodes(metadata: str) -> list[str]:
    """ONNX node names in a layer's metadata ("[ONNX Layer: a]\\x1e[ONNX Layer: b]").

    The parser writes "[ONNX Layer: <name> | property | ...]" (onnx-tensorrt processMetadata): the
    8.6 parser adds the node's doc string lines and " | Local Function: <function>", 10.x parsers
    the local function, newer ones the call stack as " | <calling node> (<function>)". So each entry
    yields its whole text (a name may hold " | "), the name before the first " | ", and the calling
    nodes; the resolver keeps those the model has."""
    names: list[str] = []
    for entry in ONNX_LAYER.findall(metadata or ""):
        fields = entry.split(" | ")
        names += [entry, fields[0]]
        names += [call["node"] for f in fields[1:] if (call := CALL_SITE.fullmatch(f))]
    return list(dict.fromkeys(names))


def precision_of_datatype(text: str) -> str:
    """'Row major linear FP32', 'Half', 'Float', 'Int8' ... -> fp32/fp16/bf16/int8/fp8, or ''."""
    lowered = text.lower()
    for needle, precision in (("bf16", "bf16"), ("bfloat16", "bf16"), ("fp16", "fp16"), ("half", "fp16"),
                              ("fp8", "fp8"), ("int8", "int8"), ("int4", "int4"), ("fp32", "fp32"),
                              ("float", "fp32")):
        if needle in lowered:
            return precision
    return ""


PRECISION_ORDER = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")  # most to least precise


def least_precise(precisions: Iterable[str]) -> str:
    """A fused layer whose outputs mix types (marked FP16 intermediates beside an FP32 result)
    computed at least part of its work in the least precise of them."""
    known = [p for p in precisions if p in PRECISION_ORDER]
    return max(known, key=PRECISION_ORDER.index) if known else ""


# -- the inspector's JSON ---------------------------------------------------------------------

def parse_inspector_json(text: str) -> list[EngineLayer]:
    """Layers of `inspector.get_engine_information(LayerInformationFormat.JSON)`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return []
    raw_layers = data.get("Layers", []) if isinstance(data, dict) else []
    return [layer for layer in (_json_layer(raw) for raw in raw_layers) if layer is not None]


def _json_layer(raw: Any) -> EngineLayer | None:
    if isinstance(raw, str):  # ProfilingVerbosity.LAYER_NAMES_ONLY: names only
        return EngineLayer(name=raw)
    if not isinstance(raw, dict) or "Name" not in raw:
        return None
    return EngineLayer(
        name=str(raw["Name"]),
        layer_type=str(raw.get("LayerType", "")),
        inputs=[_json_tensor(t) for t in raw.get("Inputs", []) if isinstance(t, dict)],
        outputs=[_json_tensor(t) for t in raw.get("Outputs", []) if isinstance(t, dict)],
        tactic_name=str(raw.get("TacticName", "")),
        tactic_value=str(raw.get("TacticValue", "")),
        metadata=str(raw.get("Metadata", "")),
    )


def _json_tensor(raw: dict[str, Any]) -> tuple[str, str]:
    return str(raw.get("Name", "")), str(raw.get("Format/Datatype", raw.get("Datatype", "")))


# -- one line per layer (inspector ONELINE, builder verbose log) ------------------------------

_KEYS = ("LayerType", "Inputs", "Constants", "Outputs", "ParameterType", "TacticName", "TacticValue",
         "StreamId", "Metadata")
_FIELD = re.compile(r", (" + "|".join(_KEYS) + r"): ")
_TENSOR_NAME = re.compile(r"\{ Name: (?P<name>.*?), (?=[A-Z][A-Za-z/]*: )")
_TENSOR_TYPE = re.compile(r"(?:Datatype|Format/Datatype): (?P<type>[^,}]*)")


def parse_oneline_layer(line: str) -> EngineLayer | None:
    """A 'Name: x, LayerType: y, Inputs: [...], Outputs: [...], TacticName: z, ..., Metadata: m' line."""
    line = line.strip("\n")
    if not line.startswith("Name: "):
        return None
    parts = _FIELD.split(line[len("Name: "):])
    layer = EngineLayer(name=parts[0])
    for key, value in zip(parts[1::2], parts[2::2], strict=False):
        if key == "LayerType":
            layer.layer_type = value
        elif key == "Inputs":
            layer.inputs = _oneline_tensors(value)
        elif key == "Outputs":
            layer.outputs = _oneline_tensors(value)
        elif key == "TacticName":
            layer.tactic_name = value
        elif key == "TacticValue":
            layer.tactic_value = value
        elif key == "Metadata":
            layer.metadata = value
    return layer


def _oneline_tensors(text: str) -> list[tuple[str, str]]:
    tensors = []
    # Each tensor is "{ Name: n, Key: v, ... }"; split on the braces, then read name and type.
    for chunk in text.split("{ ")[1:]:
        chunk = "{ " + chunk
        name = _TENSOR_NAME.search(chunk)
        dtype = _TENSOR_TYPE.search(chunk)
        if name:
            tensors.append((name["name"], dtype["type"].strip() if dtype else ""))
    return tensors


def parse_oneline_layers(lines: Iterable[str]) -> list[EngineLayer]:
    layers = []
    for text in lines:
        for line in text.splitlines():
            layer = parse_oneline_layer(line)
            if layer is not None:
                layers.append(layer)
    return layers


def layers_from_build_log(messages: Sequence[str]) -> list[EngineLayer]:
    """The engine's layers as the builder prints them at VERBOSE level after a build ("Layers:\\n
    Name: ..."); the last such block wins (one per build)."""
    blocks = [m for m in messages if m.startswith("Layers:")]
    if not blocks:
        return []
    body = blocks[-1].split("\n\n", 1)[0]  # the I/O tensor summary follows a blank line
    return parse_oneline_layers(body.splitlines()[1:])


# -- engine layers -> ONNX nodes ----------------------------------------------------------------

class NodeResolver:
    """Finds the ONNX nodes an engine layer covers."""

    def __init__(self, node_names: Sequence[str]):
        self.order = {name: i for i, name in enumerate(node_names)}
        self.node_names = list(node_names)

    def known(self, names: Iterable[str]) -> tuple[str, ...]:
        found = dict.fromkeys(n for n in names if n in self.order)
        return tuple(sorted(found, key=self.order.__getitem__))

    def from_name(self, layer_name: str) -> tuple[tuple[str, ...], str]:
        """(nodes, how) from a layer name alone: exact, fused ("a + PWN(b)"), Myelin-internal
        ("a_myl0_1") or a foreign-node range ("{ForeignNode[a...b]}")."""
        if layer_name in self.order:
            return (layer_name,), "name"
        foreign = FOREIGN_NODE.match(layer_name.strip())
        if foreign and foreign["first"] in self.order and foreign["last"] in self.order:
            lo, hi = self.order[foreign["first"]], self.order[foreign["last"]]
            return tuple(self.node_names[lo:hi + 1]), "foreign-node range"
        tokens = [t.strip() for t in NAME_SEPARATORS.split(layer_name)]
        fused = self.known(t for t in tokens if t)
        if fused:
            return fused, "fused name"
        stripped = MYELIN_SUFFIX.sub("", layer_name)
        if stripped in self.order:
            return (stripped,), "myelin name"
        return (), "unmapped"

    def resolve(self, layer: EngineLayer) -> tuple[tuple[str, ...], str]:
        from_metadata = self.known(metadata_nodes(layer.metadata))
        if from_metadata:
            return from_metadata, "metadata"
        return self.from_name(layer.name)


def to_layer_infos(layers: Sequence[EngineLayer], resolver: NodeResolver, source: str,
                   build: int | None = None) -> list[LayerInfo]:
    infos = []
    for layer in layers:
        nodes, how = resolver.resolve(layer)
        precision = least_precise(precision_of_datatype(t) for _, t in layer.outputs)
        extra: dict[str, Any] = {"mapped_by": how, "source": source}
        if layer.tactic_value:
            extra["tactic_value"] = layer.tactic_value
        if build is not None:
            extra["build"] = build
        infos.append(LayerInfo(
            name=layer.name, onnx_nodes=nodes, precision=precision,
            tactic=layer.tactic_name or layer.tactic_value, op_type=layer.layer_type,
            outputs=tuple(name for name, _ in layer.outputs), extra=extra))
    return infos


def network_layer_nodes(metadata: str, layer_name: str, resolver: NodeResolver) -> tuple[str, ...]:
    """ONNX nodes of a network (pre-build) layer: its metadata, else its name (TensorRT 8.6)."""
    nodes = resolver.known(metadata_nodes(metadata))
    return nodes or resolver.from_name(layer_name)[0]


# -- an engine file alone ---------------------------------------------------------------------

DETAILED_HINT = ("build it with detailed profiling verbosity (trtexec --profilingVerbosity=detailed, "
                 "config.profiling_verbosity = ProfilingVerbosity.DETAILED) to see each layer's precision")


def read_engine_layers(data: bytes, flavor: str = "tensorrt") -> tuple[list[EngineLayer], str]:
    """The layers a serialized engine reports through the engine inspector (TensorRT >= 8.6), and the
    TensorRT that read it. Deserializing needs TensorRT and its GPU: without them, one line says so."""
    from trtdebug.engines.tensorrt.support import load_tensorrt, make_logger

    trt = load_tensorrt(flavor)
    logger = make_logger(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        reason = (logger.errors() or ["deserialize_cuda_engine returned nothing"])[-1].splitlines()[0]
        raise UserError(f"cannot load the engine with {trt.__name__} {trt.__version__}: {reason} (an engine "
                        "loads only with the TensorRT version and GPU it was built for)")
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del inspector, engine  # before the runtime that made it
    del runtime
    return parse_inspector_json(text), f"{trt.__name__} {trt.__version__}"
