"""Strongly typed models (FP16 tensors, FP32 islands), compared as TensorRT 11 and --stronglyTyped
build them: each layer at the type its ONNX gives. The tool accepts its own fix: the typed model
fallback writes passes `trtdebug compare` run on it as a user would."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import odd_models, planted, typed_models
from tests.cli import run_cli
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.cast_islands import to_mixed_precision_onnx
from trtdebug.core.plans.precision_plan import PrecisionPlan


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("typed")
    paths = {**odd_models.write_all(folder), **typed_models.write_all(folder)}
    overflow, _ = planted.overflow()
    paths["overflow"] = folder / "overflow.onnx"
    onnx.save(overflow, paths["overflow"])
    # The planted-overflow conv net typed FP16 (weights FP16, a Cast at each end), as a converter writes it.
    paths["overflow_fp16"] = folder / "overflow_fp16.onnx"
    onnx.save(to_mixed_precision_onnx(Model.load(paths["overflow"]), PrecisionPlan("fp16")), paths["overflow_fp16"])
    return paths


def test_an_fp16_model_whose_fp32_island_covers_the_overflow_passes(models):
    compared = run_cli("compare", models["fp16_with_fp32_island"])
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "PASS fp16_with_fp32_island.onnx" in compared.stdout
    # the same model without the island overflows: the island, not the comparison, is what passes
    assert run_cli("compare", models["fp16_overflow"]).returncode == 1


@pytest.mark.parametrize("source", ["overflow", "overflow_fp16"])
def test_the_typed_model_fallback_writes_passes_compare_at_the_default_precision(models, source, tmp_path):
    inputs = ("--seed", "3")
    assert run_cli("compare", models[source], *inputs).returncode == 1
    plan = tmp_path / "plan.json"
    fallback = run_cli("fallback", models[source], "--out", plan, *inputs)
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr
    mixed = tmp_path / "plan.mixed.onnx"
    compared = run_cli("compare", mixed, *inputs)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "PASS plan.mixed.onnx" in compared.stdout
    kept = set(json.loads(plan.read_text())["nodes"])
    typed = onnx.load(str(mixed))
    original = onnx.load(str(models[source]))
    by_name = {n.name: n for n in typed.graph.node}
    assert kept and kept <= set(by_name)  # the kept layers are still there, now typed FP32
    added = [n for n in typed.graph.node if n.name not in {m.name for m in original.graph.node}]
    assert all(n.op_type == "Cast" for n in added)
    if source == "overflow_fp16":  # keeping layers changes types: no weight is stored a second time
        weights = sum(i.ByteSize() for i in typed.graph.initializer)
        assert weights <= sum(i.ByteSize() for i in original.graph.initializer)
        annotations = sum(v.ByteSize() for v in typed.graph.value_info)
        casts = sum(n.ByteSize() + 4 for n in added)  # each node's bytes and its field header
        assert mixed.stat().st_size <= models[source].stat().st_size + annotations + casts


def test_build_out_onnx_writes_the_same_typed_model_that_passes(models, tmp_path):
    plan = tmp_path / "plan.json"
    assert run_cli("fallback", models["overflow"], "--out", plan).returncode == 0
    built = tmp_path / "built.onnx"
    assert run_cli("build", models["overflow"], "--plan", plan, "--out", built).returncode == 0
    assert run_cli("compare", built).returncode == 0


def test_precision_fp32_on_an_fp16_model_is_a_note_and_the_fp16_build_is_compared(models):
    compared = run_cli("compare", models["fp16_overflow"], "--precision", "fp32")
    assert compared.returncode == 1, compared.stdout + compared.stderr
    assert "PASS" not in compared.stdout
    assert "Culprit: amplify (Mul)" in compared.stdout
    notes = [line for line in compared.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "strongly typed" in notes[0] and "--precision fp32" in notes[0]
    # an FP32-typed model keeps the weakly typed meaning of --precision
    plain = run_cli("compare", models["overflow"], "--precision", "fp32")
    assert plain.returncode == 0 and "note:" not in plain.stdout


def test_reference_model_matches_tensors_by_name_and_counts_the_rest(models, tmp_path):
    report = tmp_path / "report.json"
    compared = run_cli("compare", models["overflow_fp16"], "--reference-model", models["overflow"], "--json", report)
    assert compared.returncode == 1, compared.stdout + compared.stderr
    source = json.loads(report.read_text())["notes"]["marking"]["reference"]
    typed = Model.load(models["overflow_fp16"])
    original = Model.load(models["overflow"])
    tensors = {*(i.name for i in typed.inputs), *typed.intermediate_tensors()}
    in_both = tensors & {*(i.name for i in original.inputs), *original.intermediate_tensors()}
    only_typed = tensors - in_both  # what its Casts write: the FP16 input, the Gemm's FP16 logits
    assert only_typed and source["only_in_model"] == len(only_typed)
    assert source["matched"] == len(in_both) and source["only_in_reference"] == 0
    compared_names = {t["tensor"] for t in json.loads(report.read_text())["tensors"]}
    assert compared_names and not compared_names & only_typed
    assert "reference: overflow.onnx" in compared.stdout
    assert f"skipped {len(only_typed)} only in the model" in compared.stdout


def test_the_reference_model_is_the_reference(models, tmp_path):
    """The typed model's weights are FP16-rounded; its FP32 source's are not: against the source,
    the error of that rounding counts too."""
    report_own, report_source = tmp_path / "own.json", tmp_path / "source.json"
    run_cli("compare", models["overflow_fp16"], "--json", report_own)
    run_cli("compare", models["overflow_fp16"], "--reference-model", models["overflow"], "--json", report_source)
    first = {t["tensor"]: t for t in json.loads(report_own.read_text())["tensors"]}["relu1"]
    second = {t["tensor"]: t for t in json.loads(report_source.read_text())["tensors"]}["relu1"]
    assert first["accumulated"] is not None and first["accumulated"] != second["accumulated"]


@pytest.mark.parametrize("tool", ["autocast", "onnxconverter"])
def test_emitted_converter_calls_are_python_naming_the_kept_nodes(models, tool, tmp_path):
    plan = tmp_path / "plan.json"
    assert run_cli("fallback", models["overflow"], "--out", plan).returncode == 0
    kept = set(json.loads(plan.read_text())["nodes"])
    emitted = run_cli("build", models["overflow"], "--plan", plan, "--emit", tool)
    assert emitted.returncode == 0, emitted.stderr
    tree = ast.parse(emitted.stdout)
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and
                getattr(n.func, "attr", getattr(n.func, "id", "")) in ("convert_to_mixed_precision",
                                                                       "convert_float_to_float16"))
    keywords = {k.arg: k.value for k in call.keywords}
    listed = ast.literal_eval(keywords["nodes_to_exclude" if tool == "autocast" else "node_block_list"])
    names = {n.name for n in onnx.load(str(models["overflow"])).graph.node}
    if tool == "autocast":
        assert all(p.startswith("^") and p.endswith("$") for p in listed)
        listed = [p[1:-1].replace("\\", "") for p in listed]
    assert set(listed) == kept and set(listed) <= names
    assert ast.literal_eval(keywords["keep_io_types"]) is True


def test_feeds_of_a_typed_model_reach_the_reference_model_in_its_types(models):
    from trtdebug.workflows.problem import ProblemSpec, prepare

    case = prepare(ProblemSpec(models["overflow_fp16"], reference_model=models["overflow"]))
    assert case.problem.reference_source is not None
    assert np.asarray(case.problem.reference["logits"]).dtype == np.float32
