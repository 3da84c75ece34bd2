"""The FP32 reference: onnxruntime on the CPU with every intermediate tensor exposed.

Graph optimizations are off so every ONNX tensor exists exactly as the model defines it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from trtdebug.core.model.graph import Model, node_dependencies
from trtdebug.core.reference import ort_sessions


class Reference:
    """Runs the model in FP32 and returns every tensor (inputs, intermediates, outputs)."""

    def __init__(self, model: Model):
        self.model = model
        tensors = model.intermediate_tensors()
        types = {t: _elem_type(model, t) for t in tensors}
        self._session = ort_sessions.session(ort_sessions.with_outputs(model.proto, tensors, types, model.weights),
                                             weights=model.weights)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = ort_sessions.run(self._session, feeds)
        values.update({k: np.asarray(v) for k, v in feeds.items()})
        return values


def run_reference(model: Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return Reference(model).run(feeds)


def _elem_type(model: Model, tensor: str) -> int:
    import onnx

    dtype = model.dtype(tensor)
    return int(onnx.helper.np_dtype_to_tensor_dtype(dtype)) if dtype is not None else 0


def first_nonfinite(model: Model, reference: Mapping[str, np.ndarray]) -> tuple[str, str] | None:
    """(node, tensor) of the first tensor, in topological order, whose reference values are not finite."""
    for node in model.nodes:
        for tensor in node.output:
            value = reference.get(tensor)
            if value is not None and np.asarray(value).dtype.kind == "f" and not np.isfinite(value).all():
                return node.name, tensor
    return None


def inputs_upstream(model: Model, tensor: str) -> list[str]:
    """Graph inputs `tensor` depends on, in the model's input order."""
    inputs = {spec.name for spec in model.inputs}
    seen, stack, found = set(), [tensor], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in inputs:
            found.add(current)
        producer = model.producer.get(current)
        if producer is not None:
            stack.extend(t for t in node_dependencies(model.node_by_name[producer]) if t)
    return [spec.name for spec in model.inputs if spec.name in found]


def values_of(reference: Mapping[str, np.ndarray], tensors: Iterable[str]) -> dict[str, np.ndarray]:
    """These tensors' reference values; a LazyReference computes the ones it does not hold in one run."""
    wanted = list(dict.fromkeys(tensors))
    if isinstance(reference, LazyReference):
        return reference.values_of(wanted)
    return {t: reference[t] for t in wanted}


class LazyReference(Mapping[str, np.ndarray]):
    """The FP32 reference of a model whose tensors do not fit in memory together: it holds the feeds and
    the final outputs (one plain run, nothing else exposed); `stream` computes every tensor a group at a
    time (core.reference.pieces), and any other tensor asked for is computed again (a few are cached: culprits)."""

    CACHED = 16

    def __init__(self, model: Model, feeds: Mapping[str, np.ndarray], groups: list[list[str]]):
        from trtdebug.core.reference.pieces import PiecewiseGraph, split_by_targets

        self.model = model
        self.feeds = {k: np.asarray(v) for k, v in feeds.items()}
        self.groups = groups
        self._graph = PiecewiseGraph(model.proto, split_by_targets(model.proto, groups), model.intermediate_tensors(),
                                     weights=model.weights)
        self._keys = list(dict.fromkeys([*model.intermediate_tensors(), *self.feeds]))
        self._known = set(self._keys)
        outputs = [o.name for o in model.outputs]
        self._sessions: dict[tuple[str, ...], object] = {}
        self.held: dict[str, np.ndarray] = dict(self.feeds)
        self.held.update(self.fetch(outputs))
        self._shapes: dict[str, tuple[int, ...]] = {k: v.shape for k, v in self.held.items()}
        self._cache: dict[str, np.ndarray] = {}

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape: as the stream saw them, or (before any stream) from one streamed pass."""
        if len(self._shapes) < len(self._known):
            for _ in self.stream():
                pass
        return self._shapes

    def __getitem__(self, tensor: str) -> np.ndarray:
        if tensor in self.held:
            return self.held[tensor]
        if tensor in self._cache:
            return self._cache[tensor]
        if tensor not in self._known:
            raise KeyError(tensor)
        value = self.fetch([tensor])[tensor]
        if len(self._cache) < self.CACHED:
            self._cache[tensor] = value
        return value

    def __contains__(self, tensor: object) -> bool:
        return tensor in self._known

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def values_of(self, tensors: list[str]) -> dict[str, np.ndarray]:
        """These tensors' values: what is held or cached as it is, the rest by one run."""
        missing = [t for t in tensors if t not in self.held and t not in self._cache]
        fetched = self.fetch(missing) if missing else {}
        return {t: fetched[t] if t in fetched else self[t] for t in tensors}

    def fetch(self, tensors: list[str]) -> dict[str, np.ndarray]:
        """These tensors' values, by one run of just the nodes they need (onnxruntime runs every node of a
        graph whatever is fetched: on a billion-parameter decoder, a mask's value cost a whole run)."""
        from trtdebug.core.reference.pieces import producers, upstream_nodes, with_nodes

        key = tuple(sorted(tensors))
        if key not in self._sessions:
            self._sessions.clear()
            types = {t: _elem_type(self.model, t) for t in key}
            proto = ort_sessions.with_outputs(self.model.proto, key, types, self.model.weights)
            needed = sorted(upstream_nodes(proto, producers(proto), key))
            proto = with_nodes(proto, (proto.graph.node[i] for i in needed), key)
            self._sessions[key] = ort_sessions.session(proto, weights=self.model.weights)
        values = ort_sessions.run(self._sessions[key], self.feeds)  # type: ignore[arg-type]
        return {t: values[t] for t in key}

    def stream(self) -> Iterator[dict[str, np.ndarray]]:
        """Every tensor, a group (of `groups`) at a time."""
        for values in self._graph.run(self.feeds):
            self._shapes.update((t, v.shape) for t, v in values.items())
            yield values
