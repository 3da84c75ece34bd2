"""`trtdebug compare` as a user runs it: exit codes, one-line errors, the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import SILERO_RANGES, SILERO_SHAPES


def trtdebug(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "trtdebug", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_overflow_fixture_fails_with_exit_1_and_names_the_node(planted_models, tmp_path):
    path, truth = planted_models["overflow"]
    report = tmp_path / "report.json"
    run = trtdebug("compare", path, "--json", report)
    assert run.returncode == 1, run.stderr
    assert f"Culprit: {truth.node} (" in run.stdout
    data = json.loads(report.read_text())
    assert data["format"] == "trtdebug.compare-report" and data["passed"] is False
    assert data["first_introduced"] == truth.tensor
    entry = next(t for t in data["tensors"] if t["tensor"] == truth.tensor)
    assert entry["status"] == "introduced" and entry["defects"][0]["kind"] == "overflow"
    assert entry["accumulated"]["max_abs"] is None  # inf is written as null, keeping the JSON valid
    # every float tensor the model defines is in the report, in topological order
    assert [t["index"] for t in data["tensors"]] == sorted(t["index"] for t in data["tensors"])
    assert {"conv1", "bn1", "relu1", "conv_amplify", "logits"} <= {t["node"] for t in data["tensors"]}


def test_clean_fixture_exits_0(planted_models):
    path, _ = planted_models["clean"]
    run = trtdebug("compare", path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("PASS")


def test_tolerance_options_change_the_verdict(planted_models):
    path, _ = planted_models["clean"]
    assert trtdebug("compare", path, "--atol", "1e-9", "--rtol", "1e-9").returncode == 1


def test_inputs_npz_and_polygraphy_json_are_used(planted_models, tmp_path):
    from polygraphy.json import save_json

    path, _ = planted_models["overflow"]
    zeros = {"input": np.zeros((1, 3, 16, 16), np.float32)}
    np.savez(tmp_path / "feeds.npz", **zeros)
    save_json([zeros], str(tmp_path / "feeds.json"))
    # All-zero input: every activation is tiny, nothing overflows, the planted model passes.
    assert trtdebug("compare", path, "--inputs", tmp_path / "feeds.npz").returncode == 0
    assert trtdebug("compare", path, "--inputs", tmp_path / "feeds.json").returncode == 0


@pytest.mark.parametrize("args, message", [
    (["compare", "missing.onnx"], "model file not found"),
    (["compare", "{garbage}"], "is not a readable ONNX model"),
    (["compare", "{model}", "--input-shape", "nope:1x2"], "not a model input"),
    (["compare", "{model}", "--input-shape", "input"], "Invalid value for '--input-shape'"),
    (["compare", "{model}", "--input-shape", "input:1x3x8"], "does not fit"),
    (["compare", "{model}", "--inputs", "{wrong_names}"], "'other', which is not a model input"),
    (["compare", "{model}", "--inputs", "{wrong_shape}"], "does not fit"),
    (["compare", "{model}", "--inputs", "{pickled}"], "pickled objects"),
    (["compare", "{model}", "--plan", "{not_a_plan}"], "not a trtdebug precision plan"),
    (["compare", "{model}", "--engine", "results"], "needs --results"),
    (["compare", "{model}", "--precision", "fp4"], "Invalid value for '--precision'"),
])
def test_bad_input_is_one_line_and_exit_2(planted_models, tmp_path, args, message):
    model, _ = planted_models["clean"]
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01 not a protobuf at all \xff" * 10)
    np.savez(tmp_path / "wrong_names.npz", other=np.zeros((1, 3, 16, 16), np.float32))
    np.savez(tmp_path / "wrong_shape.npz", input=np.zeros((1, 3, 8, 8), np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "pickled.npz", input=np.array([{"a": 1}], dtype=object))
    (tmp_path / "not_a_plan.json").write_text('{"hello": 1}')
    values = {"model": model, "garbage": tmp_path / "garbage.onnx",
              "wrong_names": tmp_path / "wrong_names.npz", "wrong_shape": tmp_path / "wrong_shape.npz",
              "pickled": tmp_path / "pickled.npz", "not_a_plan": tmp_path / "not_a_plan.json"}
    run = trtdebug(*[a.format(**values) for a in args], cwd=tmp_path)
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_external_data_outside_model_folder_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(model, folder / "ok.onnx", save_as_external_data=True, location="ok.data", size_threshold=0)
    assert trtdebug("compare", folder / "ok.onnx", "--precision", "fp32").returncode == 0
    (folder / "ok.data").rename(tmp_path / "escaped.data")
    loaded = onnx.load(folder / "ok.onnx", load_external_data=False)
    for entry in loaded.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../escaped.data"
    onnx.save(loaded, folder / "escape.onnx")
    run = trtdebug("compare", folder / "escape.onnx")
    assert run.returncode == 2 and "outside the model's folder" in run.stderr
    run = trtdebug("compare", folder / "ok.onnx")
    assert run.returncode == 2 and "is missing" in run.stderr


def test_real_silero_vad_model_runs_through_compare(silero_path, tmp_path):
    args = [a for s in SILERO_SHAPES for a in ("--input-shape", s)]
    args += [a for r in SILERO_RANGES for a in ("--input-range", r)]
    run = trtdebug("compare", silero_path, *args, "--json", tmp_path / "r.json")
    assert run.returncode in (0, 1), run.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    compared = [t for t in data["tensors"] if t["status"] != "missing"]
    assert len(compared) >= 20
    # Conv+Relu stacks of the encoder are there, and the Pow/Sqrt STFT magnitude too.
    assert {"Conv", "Relu", "Sqrt"} <= {t["op_type"] for t in compared}
    assert run.returncode == (0 if data["passed"] else 1)


def test_node_names_print_as_they_are_even_when_they_look_like_emoji_codes(planted_models, tmp_path):
    """Exporters write names such as "block:smile:1"; rich would print an emoji in their place."""
    import onnx

    path, truth = planted_models["overflow"]
    model = onnx.load(path)
    odd = "conv:smile:amplify"
    for node in model.graph.node:
        if node.name == truth.node:
            node.name = odd
    renamed = tmp_path / "renamed.onnx"
    onnx.save(model, renamed)
    run = trtdebug("compare", renamed)
    assert run.returncode == 1, run.stderr
    assert f"Culprit: {odd} (" in run.stdout and "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in run.stdout
