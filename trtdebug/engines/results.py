"""Engine outputs captured elsewhere, as the candidate: `--engine results --results FILE`.

Reads what `polygraphy run model.onnx --trt --trt-outputs mark all --save-outputs out.json` writes
(with Polygraphy's own loader) or a .npz of tensors. The run ignores the feeds and returns the
saved tensors unchanged: a TensorRT run made on another machine is analysed here. Arrays keep the
shape and layout they were saved with (an NHWC tensor stays NHWC; finding that is detect's job).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trtdebug import logs
from trtdebug.core.model.graph import Model
from trtdebug.core.system import files
from trtdebug.engines.base import Capabilities, LayerInfo, Marking
from trtdebug.errors import UserError


def load_results(path: str | Path, runner: str | None = None, iteration: int = 0
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tensors of one runner and iteration, and where they came from."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"results file not found: {path}")
    if path.suffix == ".npz":
        return files.load_npz(path), {"source": str(path), "format": "npz"}
    if path.suffix == ".json":
        return _load_polygraphy(path, runner, iteration)
    raise UserError(f"unsupported results file {path.name}; use Polygraphy --save-outputs .json or .npz")


def _load_polygraphy(path: Path, runner: str | None, iteration: int
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from polygraphy.comparator import RunResults

    logs.quiet_polygraphy()
    try:
        results = RunResults.load(str(path))
    except Exception as exc:  # Polygraphy raises its own exception types for foreign JSON
        raise UserError(f"{path} is not a Polygraphy --save-outputs file ({type(exc).__name__}); "
                        "write it with `polygraphy run ... --save-outputs FILE.json`") from None
    if not isinstance(results, RunResults):
        raise UserError(f"{path} holds {type(results).__name__}, not Polygraphy run results "
                        "(input data files are for --inputs)")
    runners = list(results.keys())
    if not runners:
        raise UserError(f"{path} holds no runner results")
    chosen = runner if runner is not None else runners[0]
    if chosen not in runners:
        raise UserError(f"{path} has no runner {chosen!r}; it has: {', '.join(runners)}")
    iterations = next(v for k, v in results.items() if k == chosen)
    if not 0 <= iteration < len(iterations):
        raise UserError(f"runner {chosen!r} in {path} has {len(iterations)} iteration(s); "
                        f"iteration {iteration} does not exist")
    tensors = {str(name): np.asarray(value) for name, value in iterations[iteration].items()}
    return tensors, {"source": str(path), "format": "polygraphy", "runner": chosen, "runners": runners,
                     "iteration": iteration}


class ResultsBuilt:
    layers: list[LayerInfo]

    def __init__(self, tensors: dict[str, np.ndarray], notes: dict[str, Any]):
        self.tensors = tensors
        self.layers = []
        self.marking_notes = notes

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The saved tensors. Where the file also saved the inputs, they must be these feeds: the
        reference is computed from the feeds, so other inputs would make every tensor differ."""
        for name, saved in self.tensors.items():
            if name in feeds and not _same_values(saved, np.asarray(feeds[name])):
                raise UserError(f"the results were made with other values of input {name!r}; pass that run's "
                                "inputs with --inputs (polygraphy run --save-inputs FILE.json)")
        return dict(self.tensors)


def _same_values(saved: np.ndarray, feed: np.ndarray) -> bool:
    return saved.size == feed.size and np.array_equal(saved.reshape(-1), feed.reshape(-1),
                                                      equal_nan=saved.dtype.kind == "f")


class ResultsEngine:
    """Saved engine tensors as the candidate. Options: `runner` picks a runner by name (default:
    the first), `iteration` an iteration (default 0)."""

    name = "results"
    capabilities = Capabilities(rebuilds=False, exact_marking=True)  # the saved run is what it is

    def __init__(self, results: str | Path, runner: str | None = None, iteration: int = 0):
        self.path = Path(results)
        self.tensors, self.source = load_results(self.path, runner, iteration)

    def build(self, model: Model, plan: Any = None, bans: Any = None, mark: Marking | None = None) -> ResultsBuilt:
        known = set(model.producer) | {o.name for o in model.outputs} | {i.name for i in model.inputs}
        matching = [name for name in self.tensors if name in known]
        if not matching:
            sample = ", ".join(sorted(self.tensors)[:3]) or "nothing"
            raise UserError(f"{self.path} names no tensor of this model (it has {sample}); was it saved "
                            "from this model?")
        notes = {"mode": "results", **self.source, "tensors": len(self.tensors), "matched": len(matching),
                 "unmatched": sorted(set(self.tensors) - known),
                 "note": "tensors saved from an engine run elsewhere; feeds here are not used"}
        return ResultsBuilt({name: self.tensors[name] for name in matching}, notes)
