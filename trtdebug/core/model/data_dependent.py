"""Outputs whose shape depends on computed values (a TTS model's durations deciding its length).

Such an output's shape can differ between the reference and a reduced-precision run; the tensor to
blame is the float value computed upstream that feeds the op deciding the shape.
"""

from __future__ import annotations

from trtdebug.core.model.graph import Model

# op -> the input slots that decide its output's shape (NonZero, Compress, Unique: the values themselves)
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "NonZero": (0,), "Compress": (1,), "Unique": (0,), "Range": (0, 1, 2), "Expand": (1,), "ConstantOfShape": (0,),
    "Reshape": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1,), "TopK": (1,), "OneHot": (1,),
    "Resize": (2, 3), "Upsample": (1,),
}


def deciding_tensors(model: Model, output: str) -> list[str]:
    """The float tensors computed upstream of a shape-deciding input on `output`'s path, in topological
    order (graph inputs and weights excluded): empty when `output`'s shape follows from the inputs'."""
    upstream = _cone(model, [output])
    seeds = [node.input[i] for name in upstream if (node := model.node_by_name[name]).op_type in SHAPE_INPUTS
             for i in SHAPE_INPUTS[node.op_type] if i < len(node.input) and node.input[i]]
    deciders = _cone(model, seeds)
    return [t for name in sorted(deciders, key=model.node_index) for t in model.node_by_name[name].output
            if t and model.is_float(t) and model.node_by_name[name].op_type not in ("Shape", "Size")]


def _cone(model: Model, tensors: list[str]) -> set[str]:
    """Names of the nodes computing `tensors`, transitively."""
    seen: set[str] = set()
    stack = [model.producer[t] for t in tensors if t in model.producer]
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(model.producer[t] for t in model.node_by_name[name].input if t in model.producer)
    return seen
