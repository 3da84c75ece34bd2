"""Running an ONNX graph as consecutive pieces, so that its exposed tensors arrive a piece at a time.

onnxruntime returns every exposed tensor of a run at once; a model whose intermediate tensors do not
fit in memory together cannot be compared that way. Here the graph's nodes are split into pieces in
topological order; piece i is its own session whose inputs are what earlier pieces (or the feeds)
computed and whose outputs are its exposed tensors plus what later pieces read. Every node runs
exactly once over all pieces, with the same kernels as the whole graph (optimizations stay off), so
the values are those of one run; only the boundary tensors are held between pieces.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx import helper

from trtdebug.core.model.graph import node_dependencies
from trtdebug.core.reference import ort_sessions


def producers(proto: onnx.ModelProto) -> dict[str, int]:
    """Tensor -> index of the node writing it."""
    return {t: i for i, n in enumerate(proto.graph.node) for t in n.output if t}


def upstream_nodes(proto: onnx.ModelProto, producer: Mapping[str, int], tensors: Iterable[str],
                   skip: set[int] | frozenset[int] = frozenset()) -> set[int]:
    """Indices of the nodes these tensors depend on (their producers and theirs, transitively), except
    `skip` and what only they lead to."""
    nodes = proto.graph.node
    stack = [producer[t] for t in tensors if t in producer]
    found: set[int] = set()
    while stack:
        i = stack.pop()
        if i in skip or i in found:
            continue
        found.add(i)
        stack.extend(producer[t] for t in node_dependencies(nodes[i]) if t in producer)
    return found


def with_nodes(proto: onnx.ModelProto, nodes: Iterable[onnx.NodeProto], outputs: Iterable[str]) -> onnx.ModelProto:
    """A copy of `proto` holding just `nodes` (in the order given) and, of its outputs, just `outputs`
    (weights stay placeholders: no weight bytes are copied)."""
    wanted = set(outputs)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph
    del graph.node[:], graph.output[:]
    graph.node.extend(nodes)
    graph.output.extend(o for o in proto.graph.output if o.name in wanted)
    return copy


def split_by_targets(proto: onnx.ModelProto, groups: Sequence[Iterable[str]]) -> list[list[int]]:
    """Node indices of each piece: piece i runs the nodes not yet run that group i's tensors depend on;
    the last piece also runs whatever is left (graph outputs, dead ends)."""
    producer = producers(proto)
    assigned: set[int] = set()
    pieces: list[list[int]] = []
    for group in groups:
        piece = upstream_nodes(proto, producer, group, assigned)
        assigned |= piece
        pieces.append(sorted(piece))
    rest = [i for i in range(len(proto.graph.node)) if i not in assigned]
    if pieces:
        pieces[-1] = sorted(pieces[-1] + rest)
    else:
        pieces.append(rest)
    return pieces


class PiecewiseGraph:
    """A model run piece by piece (module docstring). `exposed`: tensors each piece returns.
    `built`: what trtdebug built `proto` as (ort_sessions.session), empty for the user's model."""

    def __init__(self, proto: onnx.ModelProto, pieces: Sequence[Sequence[int]], exposed: Iterable[str],
                 built: str = "", weights: Mapping[str, np.ndarray] | None = None):
        self.proto = proto
        self.weights = weights  # arrays of the large initializers, read in place by every piece's session
        self.built = built
        self.pieces = [list(p) for p in pieces]
        self.exposed = set(exposed)
        nodes = proto.graph.node
        self._initializers = {i.name: i for i in proto.graph.initializer}
        graph_outputs = {o.name for o in proto.graph.output}
        self._reads: list[set[str]] = []
        self._writes: list[list[str]] = []
        for piece in self.pieces:
            reads = {t for i in piece for t in node_dependencies(nodes[i])}
            writes = [t for i in piece for t in nodes[i].output if t]
            self._reads.append(reads - set(writes))
            self._writes.append(writes)
        self._last_read: dict[str, int] = {}
        for k, reads in enumerate(self._reads):
            for t in reads:
                self._last_read[t] = k
        self._outputs: list[list[str]] = []
        for k, writes in enumerate(self._writes):
            self._outputs.append([t for t in writes if t in self.exposed or t in graph_outputs
                                  or self._last_read.get(t, -1) > k])
        self._sessions: dict[int, Any] = {}
        self._input_names: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return len(self.pieces)

    def _session(self, k: int, values: Mapping[str, np.ndarray]) -> Any:
        if k in self._sessions:
            return self._sessions[k]
        nodes = self.proto.graph.node
        graph = onnx.GraphProto()
        graph.name = f"{self.proto.graph.name}_piece{k}"
        graph.node.extend(nodes[i] for i in self.pieces[k])
        inputs = sorted(t for t in self._reads[k] if t not in self._initializers and t in values)
        for t in inputs:
            value = np.asarray(values[t])
            graph.input.append(helper.make_tensor_value_info(
                t, helper.np_dtype_to_tensor_dtype(value.dtype), None))
        graph.initializer.extend(self._initializers[t] for t in sorted(self._reads[k]) if t in self._initializers)
        for t in self._outputs[k]:
            graph.output.add().name = t
        model = onnx.ModelProto()
        model.ir_version = self.proto.ir_version
        model.opset_import.extend(self.proto.opset_import)
        model.functions.extend(self.proto.functions)
        model.graph.CopyFrom(graph)
        # pieces run beside the threads measuring the piece before (run_ahead): onnxruntime's threads spinning
        # between kernels took the CPUs from them (compare on the detector: 5.4 s against 4.6 s without)
        self._sessions[k] = ort_sessions.session(model, spin=False, built=f"a piece of {self.built}" * bool(self.built),
                                                 weights=self.weights)
        self._input_names[k] = inputs
        return self._sessions[k]

    def run(self, feeds: Mapping[str, np.ndarray], keep: Iterable[str] = ()) -> Iterator[dict[str, np.ndarray]]:
        """Per piece, its exposed tensors. Boundary values live until their last reader; `keep`
        (e.g. feeds a caller re-reads) are never dropped early."""
        kept = set(keep)
        live: dict[str, np.ndarray] = dict(feeds)
        for k in range(len(self.pieces)):
            values = self.run_piece(k, live)
            for t in list(live):
                if self._last_read.get(t, -1) <= k and t not in kept:
                    del live[t]
            for t, v in values.items():
                if self._last_read.get(t, -1) > k:
                    live[t] = v
            yield {t: v for t, v in values.items() if t in self.exposed}
            del values

    def read_after(self, tensor: str, k: int) -> bool:
        """Whether a piece after k reads `tensor`."""
        return self._last_read.get(tensor, -1) > k

    def reads(self, k: int) -> set[str]:
        """What piece k reads from the feeds or earlier pieces (initializers aside)."""
        return {t for t in self._reads[k] if t not in self._initializers}

    def run_piece(self, k: int, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Piece k alone; `values` holds (at least) what it reads."""
        if not self._outputs[k]:
            return {}
        session = self._session(k, values)
        return ort_sessions.run(session, {t: values[t] for t in self._input_names[k]})


T = TypeVar("T")


def run_ahead(values: Iterator[T]) -> Iterator[T]:
    """`values`, the next one computed in a thread while the caller works on the current one: onnxruntime
    runs a piece while numpy measures the one before (both release the GIL). At most two items are alive
    at once (the caller's and the next); closing the iterator stops the thread."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue()
    tokens = threading.Semaphore(2)
    stop = threading.Event()

    def produce() -> None:
        try:
            for value in values:
                ready.put(("value", value))
                del value
                tokens.acquire()
                if stop.is_set():
                    return
            ready.put(("end", None))
        except BaseException as exc:  # handed to the caller, raised there
            ready.put(("error", exc))

    tokens.acquire()
    threading.Thread(target=produce, name="trtdebug-run-ahead", daemon=True).start()
    try:
        while True:
            kind, item = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
            del item
            tokens.release()
    finally:
        stop.set()
        tokens.release()
