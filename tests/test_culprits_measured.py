"""Culprits are what explains the failure, measured: a box decode whose every tensor is within its
own tolerance yet rounds the boxes beyond the output tolerance is named as a chain, and the
promises of tests/culprit_invariants.py hold on it."""

from __future__ import annotations

import pytest

from fixtures.decode_models import DECODE_CHAIN, INPUT, write_decode_model
from tests.culprit_invariants import check_culprit_invariants
from trtdebug.api import problem_spec
from trtdebug.cli.render.compare import render_compare
from trtdebug.workflows.compare import compare_case
from trtdebug.workflows.problem import prepare


@pytest.fixture(scope="module")
def decode(tmp_path_factory):
    path = write_decode_model(tmp_path_factory.mktemp("decode") / "decode.onnx")
    case = prepare(problem_spec(path, input_range={INPUT: (0.0, 1.0)}))
    return case, compare_case(case)


def test_decode_rounding_within_each_tensors_tolerance_is_named_as_a_chain(decode):
    _, result = decode
    assert not result.passed
    decode_reports = [result.tensor(t) for t in ("x1y1", "x2y2")]
    assert all(r.accumulated is not None and r.accumulated.frac_outside == 0 for r in decode_reports)
    headline = result.culprits[0]
    assert set(DECODE_CHAIN) <= set(headline.chain), headline
    assert headline.explained is not None and headline.explained >= 0.5
    assert all(r.status == "introduced" for r in decode_reports)
    assert result.tensor("boxes").status == "propagated"  # an FP32 Concat: exact on its own inputs


def test_decode_headline_reads_as_a_chain(decode, capsys):
    from rich.console import Console
    _, result = decode
    render_compare(result, Console(width=200))
    headline = capsys.readouterr().out.split("Worst layers")[0]
    assert "chain: decode_x1 -> decode_x2 (together remove" in headline


def test_culprit_invariants_hold_on_the_decode(decode):
    check_culprit_invariants(*decode)


def test_max_rel_is_floored_by_the_tensors_scale(decode):
    _, result = decode
    assert all(t.accumulated.max_rel < 1e3 for t in result.tensors if t.accumulated is not None)


def test_no_bisection_runs_once_nonfinite_culprits_explain_the_failure(tmp_path, monkeypatch):
    """HF's finfo.min mask NaNs everything downstream in FP16: the first non-finite culprit, measured in one
    run, explains all of it, so the later non-finite tensors are named unmeasured, and neither they nor a
    search for more cost a further run of the model."""
    from fixtures.transformer_models import FEED_RANGES, TransformerConfig, save
    from trtdebug.engines.emulator.built import EmulatorBuilt

    path = save(TransformerConfig(layers=2, mask_value="finfo"), tmp_path / "decoder.onnx")
    runs = []
    substituted = EmulatorBuilt.run_substituted
    monkeypatch.setattr(EmulatorBuilt, "run_substituted",
                        lambda self, *args, **kwargs: runs.append(1) or substituted(self, *args, **kwargs))
    result = compare_case(prepare(problem_spec(path, input_range=FEED_RANGES)))
    assert not result.passed and result.culprits_explain > 0.999
    assert result.culprits[0].node == "mask.padding" and result.culprits[0].explained > 0.999
    assert len(result.culprits) > 1 and all(c.creates_nonfinite for c in result.culprits)
    assert all(c.explained is None for c in result.culprits[1:])
    assert len(runs) == 1


def _share_of_nodes_computed(model, replaced) -> float:
    """The share of the model's nodes a run with `replaced` at reference values computes: what the
    outputs still need (everything upstream of a replaced tensor is skipped)."""
    stop, needed = set(replaced), set()
    stack = [o.name for o in model.outputs if o.name not in stop]
    while stack:
        producer = model.producer.get(stack.pop())
        if producer is None or producer in needed:
            continue
        needed.add(producer)
        stack.extend(t for t in model.node_by_name[producer].input if t and t not in stop)
    return len(needed) / len(model.nodes)


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    """FP16 rounding from the first layer on, at a tight tolerance: compared, with the trials of its
    culprit search (the tensors each put at reference values)."""
    from fixtures.transformer_models import FEED_RANGES, TransformerConfig, save
    from trtdebug.engines.emulator.built import EmulatorBuilt

    path = save(TransformerConfig(layers=12, causal=False, seq=32), tmp_path_factory.mktemp("spread") / "encoder.onnx")
    trials: list[list[str]] = []
    substituted = EmulatorBuilt.run_substituted
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EmulatorBuilt, "run_substituted", lambda self, feeds, replacements, *args, **kwargs:
                      trials.append(list(replacements)) or substituted(self, feeds, replacements, *args, **kwargs))
        case = prepare(problem_spec(path, input_range=FEED_RANGES, atol=1e-3, rtol=1e-3))
        result = compare_case(case)
    return case, result, trials


def test_a_failure_spread_from_the_first_layer_costs_a_bounded_search(spread):
    """Every trial of the culprit search runs nearly the whole model here (32 trials had cost 25 runs'
    worth). The search stops at MAX_WORK runs' worth (and the few runs measuring the culprits), and what
    it names still explains the failure."""
    from trtdebug.core.analysis.culprits import MAX_CULPRITS, MAX_WORK

    case, result, trials = spread
    assert not result.passed and result.culprits
    work = sum(_share_of_nodes_computed(case.problem.model, replaced) for replaced in trials)
    assert work <= MAX_WORK + MAX_CULPRITS + 1, (work, len(trials))
    check_culprit_invariants(case, result)


def test_a_layer_named_in_a_span_says_what_is_true_of_it(spread):
    """A span's layers get the span's measured share in their rounding defect: one defect, which says
    "within this tensor's tolerance" only of tensors that are (an out-of-tolerance tensor had been given
    a second defect saying so)."""
    _, result, _ = spread
    named = {n for c in result.culprits for n in c.chain}
    assert named, result.culprits  # spans or chains, here
    for report in result.tensors:
        kinds = [d.kind for d in report.defects]
        assert len(kinds) == len(set(kinds)), (report.node, report.defects)
        if report.node in named:
            rounding = next(d for d in report.defects if d.kind == "precision")
            assert "adds" in rounding.details
            within = report.accumulated is not None and not report.accumulated.bad
            assert ("within this tensor's tolerance" in rounding.message) == within, (report.node, rounding)
