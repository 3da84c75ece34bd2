"""Fallback's evaluations on the emulator without a build each: one graph whose per-layer rounding is
switched at run time (engines/emulator/switched.py). Every plan's final outputs must equal, bit for
bit, those of a graph built for that plan; plans the switched graph cannot hold are built; a fallback
search makes the same evaluations with the same verdicts either way."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import onnx
import pytest

from fixtures import planted
from fixtures.chain_models import planted_chain
from fixtures.tactic_models import FAULTY_NODE, faulty_accumulation
from fixtures.transformer_models import FEED_RANGES, TransformerConfig, transformer
from trtdebug.core.model.feeds import generate_feeds, resolve_shapes
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan, eligible_nodes
from trtdebug.engines.base import Marking
from trtdebug.engines.emulator.built import EmulatorBuilt
from trtdebug.engines.emulator.engine import EmulatorEngine
from trtdebug.engines.emulator.switched import SwitchedBuilt
from trtdebug.workflows.fallback import run_fallback
from trtdebug.workflows.problem import ProblemSpec, prepare

TINY_DECODER = TransformerConfig(layers=2, d_model=64, heads=4, seq=16, mask_value="finfo")


def _load(proto: onnx.ModelProto, tmp_path, ranges=None) -> tuple[Model, dict[str, np.ndarray]]:
    path = tmp_path / "model.onnx"
    onnx.save(proto, path)
    model = Model.load(str(path))
    return model, generate_feeds(model, resolve_shapes(model, {}), ranges or {})


def _plans(model: Model, default: str = "fp16", count: int = 6) -> list[PrecisionPlan]:
    """The base plan, every node kept, and random kept subsets: what a search tries."""
    nodes = eligible_nodes(model)
    rng = random.Random(0)
    subsets = [[], nodes] + [rng.sample(nodes, rng.randint(1, len(nodes))) for _ in range(count)]
    return [PrecisionPlan(default).with_precision(kept, "fp32") for kept in subsets]


def _assert_switched_equals_built(model: Model, feeds: dict[str, np.ndarray], plans: list[PrecisionPlan]) -> None:
    engine = EmulatorEngine()
    served = 0
    for plan in [plans[0], *plans]:  # the first plan of a base is built: the graph comes with the second
        replanned = engine.replanned(model, plan)
        built = EmulatorEngine().build(model, plan, mark=Marking.final_outputs_only())
        produced, expected = replanned.run(feeds), built.run(feeds)
        assert produced.keys() == expected.keys()
        for name in expected:
            assert produced[name].tobytes() == expected[name].tobytes(), (plan.kept(), name)
        assert [(layer.name, layer.precision, layer.tactic) for layer in replanned.layers] == \
            [(layer.name, layer.precision, layer.tactic) for layer in built.layers]
        served += isinstance(replanned, SwitchedBuilt)
    assert served == len(plans)  # every plan after the first one ran on the switched graph


@pytest.mark.parametrize("name", sorted(planted.FIXTURES))
def test_planted_convnets_switched_equal_built(tmp_path, name):
    proto, _ = planted.FIXTURES[name]()
    model, feeds = _load(proto, tmp_path)
    _assert_switched_equals_built(model, feeds, _plans(model))


def test_planted_chain_switched_equals_built_in_fp16_and_bf16(tmp_path):
    model, feeds = _load(planted_chain(120, 3, seed=2).proto, tmp_path)
    _assert_switched_equals_built(model, feeds, _plans(model, "fp16"))
    _assert_switched_equals_built(model, feeds, _plans(model, "bf16"))


def test_tiny_decoder_switched_equals_built(tmp_path):
    model, feeds = _load(transformer(TINY_DECODER), tmp_path, FEED_RANGES)
    plans = _plans(model, count=4)
    assert np.isnan(EmulatorEngine().build(model, plans[0]).run(feeds)["y"]).any()  # NaN in FP16: failing
    _assert_switched_equals_built(model, feeds, plans)


def test_a_plan_with_other_tactics_or_precisions_is_built(tmp_path):
    """big_matmul runs fp16_accumulate in FP16 (the model's preference), plain FP32 when kept: both
    states are in the switched graph. In BF16 the autotuner picks another variant than the graph holds
    (fp16_accumulate is an FP16 kernel): that plan is built, with the values of a build."""
    model, feeds = _load(faulty_accumulation()[0], tmp_path, {"x": (-1.0, 1.0)})
    engine = EmulatorEngine()
    base = PrecisionPlan("fp16")
    kept = base.with_precision([FAULTY_NODE], "fp32")
    other = base.with_precision([FAULTY_NODE], "bf16")
    engine.replanned(model, base)
    for plan, switched in [(base, True), (kept, True), (other, False), (base, True)]:
        replanned = engine.replanned(model, plan)
        assert isinstance(replanned, SwitchedBuilt) == switched
        assert isinstance(replanned, EmulatorBuilt) != switched
        expected = EmulatorEngine().build(model, plan).run(feeds)["y"]
        assert replanned.run(feeds)["y"].tobytes() == expected.tobytes()
    tactic = {layer.onnx_nodes: layer.tactic for layer in engine.replanned(model, other).layers}
    assert tactic[(FAULTY_NODE,)] != "fp16_accumulate"
    # the switched graph holds the variant: keeping big_matmul repairs the output, as a build says
    assert not np.array_equal(engine.replanned(model, base).run(feeds)["y"],
                              engine.replanned(model, kept).run(feeds)["y"])


def _journal(path) -> list[dict]:
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in e.items() if k not in ("seconds", "time", "timestamp", "created")} for e in entries]


def test_fallback_makes_the_same_evaluations_switched_and_built(tmp_path):
    chain = planted_chain(60, 3, seed=1)
    path = tmp_path / "chain.onnx"
    onnx.save(chain.proto, path)
    spec = ProblemSpec(model=str(path), precision="fp16")
    outcomes, journals = [], []
    for switched in (True, False):
        case = prepare(spec)
        if not switched:
            engine = EmulatorEngine()
            engine.capabilities = replace(engine.capabilities, replans=False)  # type: ignore[misc]
            case = replace(case, engine=engine)
        out = tmp_path / f"plan_{switched}.json"
        outcome = run_fallback(spec, out, prepared=case)
        outcomes.append(outcome)
        journals.append(_journal(outcome.journal))
    assert outcomes[0].search.kept == outcomes[1].search.kept
    assert set(outcomes[0].search.kept or ()) >= set(chain.culprits)
    assert [(e.kept, e.passed, e.build_failed, e.phase) for e in outcomes[0].history] == \
        [(e.kept, e.passed, e.build_failed, e.phase) for e in outcomes[1].history]
    assert len(outcomes[0].history) > 3
    assert journals[0][1:] == journals[1][1:]  # the header names the journal's settings: equal too


def test_the_switched_graph_reads_every_weight_in_place_in_both_states():
    """A switched layer is an If whose branches run the layer on the rounded or the plain inputs: a weight
    (or its rounded copy) is read where it is, never passed through a switch, which copied every weight
    of the model at every evaluation (a 1.1 B decoder's 4.5 GB)."""
    from trtdebug.engines.emulator.rounding import layer_precision
    from trtdebug.engines.emulator.switched import SwitchedGraph
    from trtdebug.engines.emulator.tactics import TacticChooser

    model = Model.from_proto(transformer(TransformerConfig(layers=2)))
    engine = EmulatorEngine()
    folded = engine.folded(model)
    plan = PrecisionPlan("fp16")
    precisions = {name: layer_precision(model, plan, nodes) for name, nodes in folded.covers.items()}
    graph = SwitchedGraph(model, folded, precisions, TacticChooser(model, folded).choose(precisions, None))
    weights = {i.name for i in graph.proto.graph.initializer}
    passed_on = [n.name for n in graph.proto.graph.node if n.op_type in ("If", "Where")
                 for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
                 for inner in a.g.node if inner.op_type == "Identity" and inner.input[0] in weights]
    passed_on += [n.name for n in graph.proto.graph.node if n.op_type == "Where" and set(n.input) & weights]
    assert graph.switchable and not passed_on, passed_on[:3]
    feeds = generate_feeds(model, resolve_shapes(model, {}), FEED_RANGES)
    low = graph.run(feeds, precisions)["y"]
    assert low.tobytes() == engine.build(model, plan, mark=Marking.final_outputs_only()).run(feeds)["y"].tobytes()
