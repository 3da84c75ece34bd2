"""`--engine results`: engine tensors saved elsewhere (Polygraphy --save-outputs JSON, .npz) as
the candidate. A real conv net runs in onnxruntime; its per-layer outputs are saved with
Polygraphy's own RunResults API with two planted defects, a tensor saved transposed to NHWC and an
all-zero tensor, and compare must find both at the right layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from polygraphy.comparator import RunResults
from polygraphy.json import save_json

from fixtures import planted
from trtdebug.core.analysis.metrics import Tolerance, compare_tensors
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference.fp32_run import run_reference
from trtdebug.engines import get_engine
from trtdebug.engines.base import Marking
from trtdebug.engines.results import ResultsEngine
from trtdebug.errors import UserError
from trtdebug.workflows.compare import run_compare
from trtdebug.workflows.problem import Problem

NHWC_TENSOR = "conv1"  # [1, 8, 16, 16] saved as [1, 16, 16, 8]
ZERO_TENSOR = "conv2"


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.from_proto(planted.clean()[0])


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(3).uniform(-1, 1, planted.INPUT_SHAPE).astype(np.float32)}


@pytest.fixture(scope="module")
def reference(model: Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_reference(model, feeds)


@pytest.fixture(scope="module")
def candidate(model: Model, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every layer output as an engine would save it, with the two planted defects."""
    saved = {t: reference[t].copy() for t in model.intermediate_tensors()}
    saved[NHWC_TENSOR] = np.ascontiguousarray(reference[NHWC_TENSOR].transpose(0, 2, 3, 1))
    saved[ZERO_TENSOR] = np.zeros_like(reference[ZERO_TENSOR])
    return saved


def save_polygraphy(path: Path, runs: list[tuple[str, dict[str, np.ndarray]]]) -> Path:
    results = RunResults()
    for runner, outputs in runs:
        results.add([outputs], runner_name=runner)
    results.save(str(path))
    return path


@pytest.fixture
def polygraphy_file(tmp_path: Path, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> Path:
    onnxrt = {"logits": reference["logits"]}
    return save_polygraphy(tmp_path / "outputs.json", [("trt-runner-N0", candidate), ("onnxrt-runner-N0", onnxrt)])


@pytest.fixture
def npz_file(tmp_path: Path, candidate: dict[str, np.ndarray]) -> Path:
    path = tmp_path / "outputs.npz"
    np.savez(path, **candidate)
    return path


@pytest.mark.parametrize("kind", ["json", "npz"])
def test_saved_tensors_come_back_unchanged(kind: str, request: pytest.FixtureRequest, model: Model,
                                           feeds: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> None:
    path = request.getfixturevalue("polygraphy_file" if kind == "json" else "npz_file")
    built = ResultsEngine(results=path).build(model, PrecisionPlan("fp16"), None, Marking())
    values = built.run(feeds)
    assert set(values) == set(candidate)
    for name, value in values.items():
        assert value.shape == candidate[name].shape and np.array_equal(value, candidate[name])
    assert values[NHWC_TENSOR].shape == (1, 16, 16, 8)  # layout left as saved; detection is compare's job
    assert built.marking_notes["format"] == ("polygraphy" if kind == "json" else "npz")
    assert built.layers == []


@pytest.mark.parametrize("kind", ["json", "npz"])
def test_compare_finds_both_planted_defects_at_their_layers(kind: str, request: pytest.FixtureRequest,
                                                            model: Model, feeds: dict[str, np.ndarray],
                                                            reference: dict[str, np.ndarray]) -> None:
    path = request.getfixturevalue("polygraphy_file" if kind == "json" else "npz_file")
    values = ResultsEngine(results=path).build(model, PrecisionPlan("fp16"), None, Marking()).run(feeds)
    result = compare_tensors(model, reference, values, Tolerance.for_precision("fp16"))
    first = result.first_introduced
    assert first is not None and first.tensor == NHWC_TENSOR and first.node == "conv1"
    assert [d.kind for d in first.defects] == ["layout"]
    zero = result.tensor(ZERO_TENSOR)
    assert zero.status == "introduced" and zero.node == "conv2" and [d.kind for d in zero.defects] == ["all_zero"]
    assert [t.tensor for t in result.introduced] == [NHWC_TENSOR, ZERO_TENSOR]  # nothing else is wrong


def test_the_compare_workflow_takes_the_results_engine(model: Model, feeds: dict[str, np.ndarray],
                                                       polygraphy_file: Path) -> None:
    engine = get_engine("results", results=str(polygraphy_file))
    result = run_compare(Problem.prepare(model, feeds, Tolerance.for_precision("fp16")), engine,
                         PrecisionPlan("fp16"))
    assert [t.tensor for t in result.introduced] == [NHWC_TENSOR, ZERO_TENSOR]
    assert result.marking["runner"] == "trt-runner-N0"
    assert result.reproduction is None  # nothing is rebuilt, so nothing to reproduce


def test_a_runner_can_be_chosen_by_name(model: Model, feeds: dict[str, np.ndarray], polygraphy_file: Path,
                                        reference: dict[str, np.ndarray]) -> None:
    built = ResultsEngine(results=polygraphy_file, runner="onnxrt-runner-N0").build(model)
    assert list(built.run(feeds)) == ["logits"]
    assert np.array_equal(built.run(feeds)["logits"], reference["logits"])
    with pytest.raises(UserError, match="has no runner 'trt'; it has: trt-runner-N0, onnxrt-runner-N0"):
        ResultsEngine(results=polygraphy_file, runner="trt")


def test_other_iterations_can_be_chosen(tmp_path: Path, model: Model, reference: dict[str, np.ndarray]) -> None:
    results = RunResults()
    results.add([{"logits": reference["logits"]}, {"logits": reference["logits"] * 2}], runner_name="trt-runner")
    results.save(str(tmp_path / "two.json"))
    second = ResultsEngine(results=tmp_path / "two.json", iteration=1).build(model).run({})
    assert np.array_equal(second["logits"], reference["logits"] * 2)
    with pytest.raises(UserError, match="has 2 iteration"):
        ResultsEngine(results=tmp_path / "two.json", iteration=2)


def test_unreadable_and_mismatched_files_are_one_line_errors(tmp_path: Path, model: Model,
                                                             feeds: dict[str, np.ndarray]) -> None:
    with pytest.raises(UserError, match="results file not found"):
        ResultsEngine(results=tmp_path / "missing.json")
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(UserError, match="is not a Polygraphy --save-outputs file"):
        ResultsEngine(results=tmp_path / "garbage.json")
    save_json([feeds], str(tmp_path / "inputs.json"))  # what `polygraphy run --save-inputs` writes
    with pytest.raises(UserError, match="not a Polygraphy --save-outputs file"):
        ResultsEngine(results=tmp_path / "inputs.json")
    np.savez(tmp_path / "other.npz", some_tensor=np.zeros(3))
    with pytest.raises(UserError, match="names no tensor of this model"):
        ResultsEngine(results=tmp_path / "other.npz").build(model)
    np.savez(tmp_path / "pickled.npz", conv1=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="holds pickled objects"):
        ResultsEngine(results=tmp_path / "pickled.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        ResultsEngine(results=tmp_path / "broken.npz")
    (tmp_path / "outputs.txt").write_text("x")
    with pytest.raises(UserError, match="unsupported results file"):
        ResultsEngine(results=tmp_path / "outputs.txt")


def test_saved_inputs_must_match_the_feeds(tmp_path: Path, model: Model, feeds: dict[str, np.ndarray],
                                           reference: dict[str, np.ndarray]) -> None:
    path = tmp_path / "with_inputs.npz"
    np.savez(path, input=feeds["input"] + 1, logits=reference["logits"])
    built = ResultsEngine(results=path).build(model)
    with pytest.raises(UserError, match="other values of input 'input'"):
        built.run(feeds)
    np.savez(path, input=feeds["input"], logits=reference["logits"])
    assert set(ResultsEngine(results=path).build(model).run(feeds)) == {"input", "logits"}


def test_a_capture_that_holds_its_inputs_is_judged_on_them(planted_models, tmp_path):
    """Without --inputs, the FP32 reference runs the inputs the capture was made on (taken from the
    capture), never generated ones: a capture of the FP32 model itself then passes."""
    from tests.cli import run_cli
    from trtdebug.core.reference.fp32_run import run_reference

    path, _ = planted_models["clean"]
    inputs = {"input": np.random.default_rng(7).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)}
    captured = run_reference(Model.load(path), inputs)  # every tensor, as an FP32 engine would give them
    np.savez(tmp_path / "capture.npz", **inputs, **{k: v for k, v in captured.items() if k not in inputs})
    run = run_cli("compare", path, "--engine", "results", "--results", tmp_path / "capture.npz")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("PASS")
