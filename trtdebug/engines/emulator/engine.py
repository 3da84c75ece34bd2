"""CPU emulation of a reduced-precision TensorRT build, with onnxruntime: EmulatorEngine.

What the builder does, in order, and where the emulator does it:
1. FP32 graph rewriting first: constant folding and BatchNormalization folded into its
   neighbour (folding.py, by onnxruntime's basic optimization level). A node of the folded graph
   is one emulated *layer*.
2. Reduced precision second: a layer planned in FP16 (or BF16) reads and writes values rounded to
   that type while its arithmetic runs in FP32 (rounding.py: Cast pairs in an FP32 graph).
3. Tactics: the emulated autotuner picks each layer's arithmetic variant (tactics.py).
The result is an EmulatorBuilt (built.py). A Q/DQ model builds through int8.py (INT8) or
float_qdq.py (FP8, INT4) instead.
A search's many plans (`replanned`) run on one graph whose rounding is switched per layer at run
time (switched.py), built once the same base plan comes a second time.
"""

from __future__ import annotations

import json
from typing import Any

from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import QUANTIZED_PRECISIONS, PrecisionPlan, precision_rank
from trtdebug.core.quantized.format import format_of
from trtdebug.engines.base import BuildError, Built, Capabilities, Marking
from trtdebug.engines.emulator.bf16_arithmetic import refuse_bf16_below_min_opset
from trtdebug.engines.emulator.built import EmulatorBuilt, layer_infos
from trtdebug.engines.emulator.float_qdq import build_float_qdq
from trtdebug.engines.emulator.folding import FoldedGraph, fold_like_builder
from trtdebug.engines.emulator.int8 import build_int8
from trtdebug.engines.emulator.rounding import layer_precision
from trtdebug.engines.emulator.switched import SwitchedBuilt, SwitchedGraph
from trtdebug.engines.emulator.tactics import TacticChooser
from trtdebug.errors import UserError


class EmulatorEngine:
    """Emulates TensorRT FP16/BF16 builds on the CPU (see the module docstring)."""

    name = "emulator"
    # Exposing a tensor never changes what the emulator computes; its autotuner can be reseeded.
    capabilities = Capabilities(exact_marking=True, local_error=True, substitution=True, reseeds_tactics=True,
                                tactics=True, pieces=True, replans=True)

    def __init__(self, tactic_seed: int | None = None) -> None:
        self._folded: dict[str, FoldedGraph] = {}
        self.tactic_seed = tactic_seed
        # replanned's graph: (model, low plan, bans) -> the switched graph, None until that key comes twice
        # (a single evaluation is cheaper built) or where it cannot be built
        self._switching: tuple[tuple[Any, ...], SwitchedGraph | None, bool] | None = None

    def with_tactic_seed(self, seed: int) -> EmulatorEngine:
        """The same emulator with other autotuner timing noise: a repeated build that may pick
        other tactics (the hook `trtdebug.workflows.tactics` uses to diff repeated builds)."""
        engine = EmulatorEngine(tactic_seed=seed)
        engine._folded = self._folded
        return engine

    def folded(self, model: Model) -> FoldedGraph:
        if model.sha256 not in self._folded:
            self._folded[model.sha256] = fold_like_builder(model)
        return self._folded[model.sha256]

    def build(self, model: Model, plan: PrecisionPlan, bans: Any = None,
              mark: Marking | None = None) -> Built:
        quant_format = format_of(model)
        if quant_format is not None:
            if quant_format.precision != "int8":  # FP8, INT4: codes numpy cannot hold (emulator/float_qdq.py)
                return build_float_qdq(self, quant_format.model, plan, bans, mark or Marking())
            return build_int8(self, quant_format.model, plan, bans, mark or Marking())
        quantized = [p for p in (plan.default, *plan.nodes.values()) if p in QUANTIZED_PRECISIONS]
        if quantized:
            raise UserError(f"an {quantized[0].upper()} plan needs its model prepared for {quantized[0].upper()} "
                            "(trtdebug compare/fallback --precision do this: a Q/DQ model as quantized, a float "
                            "model calibrated for INT8)")
        refuse_bf16_below_min_opset(model.opset, [plan.default, *plan.nodes.values()])
        return self.build_folded(model, self.folded(model), plan, bans, mark)

    def build_folded(self, model: Model, folded: FoldedGraph, plan: PrecisionPlan, bans: Any = None,
                     mark: Marking | None = None) -> EmulatorBuilt:
        """Build from an already folded graph (the INT8 path folds nothing: see emulator/int8.py)."""
        precisions = {name: layer_precision(model, plan, nodes) for name, nodes in folded.covers.items()}
        chooser = TacticChooser(model, folded, seed=self.tactic_seed)
        tactics = chooser.choose(precisions, bans)
        return self._built(model, folded, plan, tactics, mark or Marking(), chooser)

    @staticmethod
    def _built(model: Model, folded: FoldedGraph, plan: PrecisionPlan, tactics: dict[str, str], mark: Marking,
               chooser: TacticChooser) -> EmulatorBuilt:
        try:
            return EmulatorBuilt(model, folded, plan, tactics, mark, chooser.choices)
        except UserError as exc:
            raise BuildError(str(exc)) from None

    def replanned(self, model: Model, plan: PrecisionPlan, bans: Any = None) -> Built:
        """`build(model, plan, bans, final outputs only)`, as one run of a switched graph where the plan
        keeps each layer in the precision of the graph's low plan (the plan without its overrides to a
        higher precision: fallback's base) or in FP32, with the tactics that graph was built with.
        Other plans (another precision, other tactics, a quantized model) are built."""
        final = Marking.final_outputs_only()
        plans = (plan.default, *plan.nodes.values())
        if format_of(model) is not None or any(p in QUANTIZED_PRECISIONS for p in plans):
            return self.build(model, plan, bans, final)
        refuse_bf16_below_min_opset(model.opset, list(plans))
        folded = self.folded(model)
        precisions = {name: layer_precision(model, plan, nodes) for name, nodes in folded.covers.items()}
        chooser = TacticChooser(model, folded, seed=self.tactic_seed)
        tactics = chooser.choose(precisions, bans)
        graph = self._switched_graph(model, folded, plan, bans)
        if graph is None or not graph.serves(precisions, tactics):
            return self.build(model, plan, bans, final)  # (through `build`: what a subclass adds to it holds)
        return SwitchedBuilt(graph, precisions, layer_infos(folded, precisions, tactics, chooser.choices))

    def _switched_graph(self, model: Model, folded: FoldedGraph, plan: PrecisionPlan, bans: Any
                        ) -> SwitchedGraph | None:
        rank = precision_rank(plan.default)
        low = PrecisionPlan(plan.default, {n: p for n, p in plan.nodes.items() if precision_rank(p) <= rank})
        key = (model.sha256, low.default, tuple(sorted(low.nodes.items())),
               json.dumps(bans.to_json(), sort_keys=True) if bans else None)
        if self._switching is None or self._switching[0] != key:
            self._switching = (key, None, False)  # first time: this plan is built
            return None
        _, graph, tried = self._switching
        if graph is None and not tried:
            precisions = {name: layer_precision(model, low, nodes) for name, nodes in folded.covers.items()}
            tactics = TacticChooser(model, folded, seed=self.tactic_seed).choose(precisions, bans)
            try:
                graph = SwitchedGraph(model, folded, precisions, tactics)
            except UserError:  # a variant the graph cannot hold: every plan is built, and says why
                graph = None
            self._switching = (key, graph, True)
        return graph
