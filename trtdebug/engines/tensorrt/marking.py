"""Exposing tensors: which to mark, in chunks, and bisecting out the ones that break the build.

Marking a tensor (as an output or a debug tensor) can make the build fail (Myelin, constant
outputs: see /work/shared/trt-api.md section 1). A chunk whose full marking fails is split in
halves until the single tensors that break it are found; they are dropped and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trtdebug.engines.base import BuildError, Marking
from trtdebug.engines.tensorrt.builder import BuildResult, Chunk

if TYPE_CHECKING:
    from trtdebug.core.model.graph import Model
    from trtdebug.engines.tensorrt.builder import NetworkBuilder


REFUSED_BY_MARK_DEBUG = "mark_debug returned False: TensorRT did not mark it as a debug tensor"


def build_marked(builder: NetworkBuilder, model: Model, mark: Marking, max_builds: int
                 ) -> tuple[list[Chunk], dict[str, Any]]:
    """One build per chunk of the markable tensors `mark` asks for; tensors that break a build are
    bisected out and reported as dropped (with the build error that proves it)."""
    onnx_tensors = set(model.intermediate_tensors())
    wanted = onnx_tensors if mark.tensors is None else onnx_tensors & set(mark.tensors)
    candidates = builder.candidates(wanted)
    size = mark.chunk_size if mark.chunk_size and mark.chunk_size > 0 else max(len(candidates), 1)
    groups = [candidates[i:i + size] for i in range(0, len(candidates), size)] or [[]]
    chunks: list[Chunk] = []
    dropped: list[dict[str, str]] = []
    for group in groups:
        kept, failed, result = build_dropping(builder, group, mark.mode, max_builds)
        chunks.append(Chunk(kept, result))
        dropped.extend({"tensor": t, "reason": builder.failures.get(t, "not tried: marking retry budget spent")}
                       for t in failed)
    # A DequantizeLinear output that broke the build: mark the float tensor it stands for instead.
    fallbacks = {d["tensor"]: builder.fallback_for(d["tensor"]) for d in dropped}
    retry = [f for f in dict.fromkeys(fallbacks.values()) if f is not None and f not in candidates]
    if retry and builder.builds < max_builds:
        kept, failed, result = build_dropping(builder, retry, mark.mode, max_builds)
        if kept:
            chunks.append(Chunk(kept, result))
            dropped = [d for d in dropped if fallbacks[d["tensor"]] not in kept]
        dropped.extend({"tensor": t, "reason": builder.failures.get(t, "not tried: marking retry budget spent")}
                       for t in failed)
    for chunk in chunks:  # built, but TensorRT said it did not mark these: expect nothing of them
        refused = [t for t in chunk.marked if t in chunk.result.refused]
        chunk.marked = [t for t in chunk.marked if t not in refused]
        dropped.extend({"tensor": t, "reason": REFUSED_BY_MARK_DEBUG} for t in refused)
    marked = [t for c in chunks for t in c.marked]
    return chunks, {"requested": len(candidates), "marked": marked, "dropped": dropped}


def build_dropping(builder: NetworkBuilder, tensors: list[str], mode: str, max_builds: int
                   ) -> tuple[list[str], list[str], BuildResult]:
    """Build with `tensors` marked; if that fails, bisect out the tensors that break it."""
    last_failure = [""]

    def attempt(marked: list[str]) -> BuildResult | None:
        result = builder.build(marked, mode)
        if result.serialized is None:
            last_failure[0] = result.failure()
            return None
        return result

    def culprit(tensor: str) -> None:
        builder.failures[tensor] = last_failure[0]

    full = attempt(tensors)
    if full is not None:
        return tensors, [], full
    base = builder.unmarked(mode)
    if base.serialized is None:  # the plan itself does not build: marking is not the cause
        raise BuildError(base.failure())
    kept, failed, result = bisect_markable(attempt, tensors, lambda: builder.builds >= max_builds, culprit)
    if result is None and kept:  # halves that built alone may still fail together
        result = attempt(kept)
        if result is None:
            kept, failed = [], failed + kept
    return kept, failed, result or base


def bisect_markable(attempt: Callable[[list[str]], Any | None], tensors: list[str],
                    out_of_budget: Callable[[], bool],
                    on_culprit: Callable[[str], None] = lambda tensor: None
                    ) -> tuple[list[str], list[str], Any | None]:
    """Split `tensors` (whose joint marking failed) into kept and dropped: halves that build are
    kept whole, failing halves are split until single culprits remain (`on_culprit` is called
    right after the failed attempt that proves one). Assumes marking nothing builds. Returns
    (kept, dropped, the result of building with exactly `kept`, if one was made)."""

    def resolve(base: list[str], group: list[str]) -> tuple[list[str], list[str], Any | None]:
        if not group:
            return [], [], None
        if out_of_budget():
            return [], list(group), None
        result = attempt(base + group)
        if result is not None:
            return list(group), [], result
        return split(base, group)

    def split(base: list[str], group: list[str]) -> tuple[list[str], list[str], Any | None]:
        if len(group) == 1:
            on_culprit(group[0])
            return [], list(group), None
        middle = len(group) // 2
        kept_left, dropped_left, result_left = resolve(base, group[:middle])
        kept_right, dropped_right, result_right = resolve(base + kept_left, group[middle:])
        result = result_right if kept_right else result_left
        return kept_left + kept_right, dropped_left + dropped_right, result

    kept, dropped, result = split([], list(tensors))
    return kept, dropped, result
