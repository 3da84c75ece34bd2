"""Bad inputs as users bring them, through the real CLI: every one ends in exit 2 and exactly one
line on stderr starting with "trtdebug: error:" that names the problem, no traceback, and nothing
written: the folder holding every input (the command's working directory) is unchanged.
All the CLI's bad-input cases live in the one table here, BAD.
Model classes that must simply work (IR 3 with initializers as inputs, all-FP16, all-BF16, a graph
without nodes) run compare and fallback to a verdict, quietly."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import odd_models, planted, user_models
from tests.cli import run_cli
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.ban_list import BanEntry, BanList
from trtdebug.core.plans.precision_plan import PrecisionPlan


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every file a case reads, in one folder: models, feeds, a plan, and a regular file to block paths."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    files = dict(odd_models.write_all(folder))
    clean, _ = planted.clean()
    files["clean"] = folder / "clean.onnx"
    onnx.save(clean, files["clean"])
    feeds = {"input": np.random.default_rng(0).uniform(-1, 1, planted.INPUT_SHAPE).astype(np.float32)}
    files["feeds"] = folder / "feeds.npz"
    np.savez(files["feeds"], **feeds)
    feeds["input"][0, 1, 2, 3] = np.nan
    files["nan_feeds"] = folder / "nan_feeds.npz"
    np.savez(files["nan_feeds"], **feeds)
    feeds["input"][0, 1, 2, 3] = np.inf
    files["inf_feeds"] = folder / "inf_feeds.npz"
    np.savez(files["inf_feeds"], **feeds)
    files["fp16_plan"] = folder / "fp16_plan.json"
    PrecisionPlan(default="fp16").for_model(Model.load(files["clean"])).save(files["fp16_plan"])
    files["f64_feeds"] = folder / "f64_feeds.npz"
    np.savez(files["f64_feeds"], input=np.random.default_rng(1).uniform(-1, 1, planted.INPUT_SHAPE))
    files["huge_f64_feeds"] = folder / "huge_f64_feeds.npz"
    np.savez(files["huge_f64_feeds"], input=np.full(planted.INPUT_SHAPE, 1e300))
    ids = onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT32, [3])
    doubled = onnx.helper.make_tensor_value_info("doubled", onnx.TensorProto.INT32, [3])
    files["int32_model"] = folder / "int32_model.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Add", ["ids", "ids"], ["doubled"])],
                                                            "ids", [ids], [doubled]),
                                     opset_imports=[onnx.helper.make_opsetid("", 17)]), files["int32_model"])
    files["big_ids"] = folder / "big_ids.npz"
    np.savez(files["big_ids"], ids=np.array([1, 2, 2**40], np.int64))
    files["bans"] = folder / "bans.json"
    BanList((BanEntry("conv", "fp16-winograd"),), Model.load(files["clean"]).sha256).save(files["bans"])
    files["blocker"] = folder / "blocker"
    files["blocker"].write_text("a regular file, so nothing can be created under it\n")
    files["garbage"] = folder / "garbage.onnx"
    files["garbage"].write_bytes(b"\x00\x01 not a protobuf at all \xff" * 10)
    files["wrong_names"] = folder / "wrong_names.npz"
    np.savez(files["wrong_names"], other=np.zeros(planted.INPUT_SHAPE, np.float32))
    files["wrong_shape"] = folder / "wrong_shape.npz"
    np.savez(files["wrong_shape"], input=np.zeros((1, 3, 8, 8), np.float32))
    files["pickled"] = folder / "pickled.npz"
    np.savez(files["pickled"], input=np.array([{"a": 1}], dtype=object))
    files["empty_batch"] = folder / "empty_batch.npz"  # zero samples: every comparison would pass
    np.savez(files["empty_batch"], x=np.zeros((0, 3, 4, 4), np.float32))
    files["one_batch"] = folder / "one_batch.npz"
    np.savez(files["one_batch"], x=np.ones((1, 3, 4, 4), np.float32))
    for name, make in {"noisy": user_models.noisy_decoder, "seeded_noisy": lambda: user_models.noisy_decoder(True),
                       "training_dropout": user_models.training_dropout}.items():
        files[name] = folder / f"{name}.onnx"
        onnx.save(make(), files[name])
    files["capture"] = folder / "capture.npz"  # an engine's tensors without the inputs they were made on
    np.savez(files["capture"], logits=np.zeros((1, 10), np.float32))
    files["not_a_plan"] = folder / "not_a_plan.json"
    files["not_a_plan"].write_text('{"hello": 1}')
    return files


@dataclass(frozen=True)
class Bad:
    id: str
    args: tuple[str, ...]  # {name} is a path from `world`
    says: tuple[str, ...] = ()  # what the one error line must contain
    xfail: str = ""


BAD = [
    Bad("budget-below-the-weights", ("compare", "{clean}", "--memory-budget", "1KB"),
        ("weights alone take", "give --memory-budget")),
    Bad("int8-on-a-typed-model", ("compare", "{fp16}", "--precision", "int8"),
        ("strongly typed", "Q/DQ nodes only")),
    Bad("reference-model-typed", ("compare", "{fp16}", "--reference-model", "{bf16}"),
        ("types tensors FP16/BF16", "FP32 model")),
    Bad("reference-model-other-inputs", ("compare", "{fp16}", "--reference-model", "{clean}"),
        ("reads input 'input'",)),
    Bad("reference-model-missing", ("compare", "{fp16}", "--reference-model", "{blocker}/none.onnx"),
        ("model file not found",)),
    Bad("model-missing", ("compare", "missing.onnx"), ("model file not found",)),
    Bad("model-not-onnx", ("compare", "{garbage}"), ("is not a readable ONNX model",)),
    Bad("input-shape-unknown-input", ("compare", "{clean}", "--input-shape", "nope:1x2"), ("not a model input",)),
    Bad("input-shape-without-dims", ("compare", "{clean}", "--input-shape", "input"),
        ("Invalid value for '--input-shape'",)),
    Bad("input-shape-wrong-rank", ("compare", "{clean}", "--input-shape", "input:1x3x8"), ("does not fit",)),
    Bad("inputs-file-wrong-names", ("compare", "{clean}", "--inputs", "{wrong_names}"),
        ("'other', which is not a model input",)),
    Bad("inputs-file-wrong-shape", ("compare", "{clean}", "--inputs", "{wrong_shape}"), ("does not fit",)),
    Bad("inputs-file-pickled", ("compare", "{clean}", "--inputs", "{pickled}"), ("pickled objects",)),
    Bad("inputs-file-empty-batch", ("compare", "{dynamic}", "--inputs", "{empty_batch}"), ("'x'", "is empty")),
    Bad("input-shape-contradicts-inputs", ("compare", "{dynamic}", "--inputs", "{one_batch}", "--input-shape",
                                           "x:2x3x4x4"), ("contradicts the inputs file",)),
    Bad("input-shape-repeated", ("compare", "{dynamic}", "--input-shape", "x:1x3x4x4", "--input-shape", "x:2x3x4x4"),
        ("--input-shape", "'x' 2 times")),
    Bad("inputs-file-float64-beyond-float32", ("compare", "{clean}", "--inputs", "{huge_f64_feeds}"),
        ("'input'", "float64", "float32")),
    Bad("inputs-file-int64-beyond-int32", ("compare", "{int32_model}", "--inputs", "{big_ids}"),
        ("'ids'", "int64", "1099511627776", "int32")),
    Bad("input-range-with-inputs", ("compare", "{dynamic}", "--inputs", "{one_batch}", "--input-range", "x:0,1"),
        ("--input-range and --inputs",)),
    Bad("check-that-cannot-run", ("compare", "{clean}", "--check", "no_such_tool_anywhere {{outputs}}"),
        ("--check could not run",)),
    Bad("plan-not-a-plan", ("compare", "{clean}", "--plan", "{not_a_plan}"), ("not a trtdebug precision plan",)),
    Bad("results-capture-without-its-inputs", ("compare", "{clean}", "--engine", "results", "--results", "{capture}"),
        ("does not hold input 'input'", "--inputs")),
    Bad("results-engine-without-results", ("compare", "{clean}", "--engine", "results"), ("needs --results",)),
    Bad("against-without-results", ("compare", "{clean}", "--against", "{feeds}"),
        ("--against compares two captures", "--engine results --results")),
    Bad("against-with-results-engine-but-no-results", ("compare", "{clean}", "--engine", "results", "--against",
                                                        "{feeds}"), ("--engine results --results",)),
    # no TensorRT here: an engine file cannot be read back
    Bad("inspect-without-tensorrt", ("inspect", "{garbage}"), ("TensorRT is not installed", "pip install")),
    Bad("precision-unknown", ("compare", "{clean}", "--precision", "fp4"), ("Invalid value for '--precision'",)),
    Bad("nan-in-inputs-file", ("compare", "{clean}", "--inputs", "{nan_feeds}"), ("'input'",)),
    Bad("inf-in-inputs-file", ("compare", "{clean}", "--inputs", "{inf_feeds}"), ("'input'",)),
    Bad("atol-negative", ("compare", "{clean}", "--atol", "-1"), ("--atol",)),
    Bad("atol-nan", ("compare", "{clean}", "--atol", "nan"), ("--atol",)),
    Bad("rtol-inf", ("compare", "{clean}", "--rtol", "inf"), ("--rtol",)),
    Bad("output-tol-negative", ("compare", "{clean}", "--output-tol", "logits:-1,0.1"), ("--output-tol",)),
    Bad("input-shape-zero-dim", ("compare", "{dynamic}", "--input-shape", "x:0x4"), ("--input-shape",)),
    Bad("top-negative", ("compare", "{clean}", "--top", "-1"), ("--top",)),
    Bad("chunk-zero", ("compare", "{clean}", "--chunk", "0"), ("--chunk",)),
    Bad("seed-negative", ("compare", "{clean}", "--seed", "-5"), ("--seed",)),
    Bad("input-range-nan", ("compare", "{clean}", "--input-range", "input:nan,1"), ("--input-range",)),
    Bad("input-range-reversed", ("compare", "{clean}", "--input-range", "input:2,1"), ("--input-range",)),
    Bad("huge-input-shape", ("compare", "{dynamic}", "--input-shape", "x:100000x3x1024x1024"),
        ("GiB", "--input-shape")),
    Bad("json-under-a-file", ("compare", "{clean}", "--json", "{blocker}/sub/report.json"), ("--json",)),
    Bad("html-under-a-file", ("compare", "{clean}", "--html", "{blocker}/sub/report.html"), ("--html",)),
    Bad("build-out-under-a-file", ("build", "{clean}", "--plan", "{fp16_plan}", "--out", "{blocker}/sub/m.onnx"),
        ("--out",)),
    Bad("build-bans-into-mixed-onnx", ("build", "{clean}", "--plan", "{fp16_plan}", "--bans", "{bans}", "--out",
                                       "mixed.onnx"), ("--bans", "mixed-precision ONNX", "NAME.engine")),
    Bad("build-bans-with-emit", ("build", "{clean}", "--plan", "{fp16_plan}", "--bans", "{bans}", "--emit",
                                 "trtexec"), ("--bans", "--emit")),
    Bad("json-onto-the-model", ("compare", "{clean}", "--json", "{clean}"), ("--json", "model")),
    Bad("build-out-onto-the-model", ("build", "{clean}", "--plan", "{fp16_plan}", "--out", "{clean}"),
        ("--out", "model")),
    Bad("fallback-out-onto-the-model", ("fallback", "{clean}", "--out", "{clean}"), ("--out", "model")),
    Bad("fallback-out-onto-the-inputs", ("fallback", "{clean}", "--inputs", "{feeds}", "--out", "{feeds}"),
        ("--out", "--inputs")),
    Bad("fallback-out-onto-a-second-inputs-file", ("fallback", "{clean}", "--inputs", "{feeds}", "--inputs",
                                                    "{inf_feeds}", "--out", "{inf_feeds}"), ("--out", "--inputs")),
    Bad("fallback-second-inputs-file-missing", ("fallback", "{clean}", "--inputs", "{feeds}", "--inputs",
                                                "{blocker}.missing.npz", "--out", "{blocker}.plan.json"),
        ("--inputs", "does not exist")),
    Bad("fallback-second-inputs-nan", ("fallback", "{clean}", "--inputs", "{feeds}", "--inputs", "{nan_feeds}",
                                       "--out", "{blocker}.plan.json"), ("NaN",)),
    Bad("precision-contradicts-plan", ("compare", "{clean}", "--precision", "fp32", "--plan", "{fp16_plan}"),
        ("--precision fp32", "fp16")),
    Bad("custom-op-compare", ("compare", "{custom_op}"), ("'fancy'", "FancyActivation", "com.example",
                                                          "--engine results")),
    Bad("node-less-model", ("compare", "{no_nodes}"), ("no nodes",)),
    Bad("node-less-model-fallback", ("fallback", "{no_nodes}", "--out", "{blocker}.plan.json"), ("no nodes",)),
    # A run refused after its outputs were checked creates no output folder.
    Bad("fallback-refused-into-a-new-folder", ("fallback", "{custom_op}", "--out", "new_plans/p.json"),
        ("FancyActivation",)),
    Bad("tactics-refused-into-a-new-folder", ("tactics", "{custom_op}", "--out", "new_bans/b.json"),
        ("FancyActivation",)),
    Bad("compare-refused-into-a-new-folder", ("compare", "{custom_op}", "--json", "new_reports/r.json"),
        ("FancyActivation",)),
    Bad("build-refused-into-a-new-folder", ("build", "{clean}", "--plan", "{not_a_plan}", "--out",
                                            "new_models/m.onnx"), ("not a trtdebug precision plan",)),
    Bad("ray-address-malformed", ("fallback", "{clean}", "--ray-address", "not an address", "--out",
                                  "{blocker}.plan.json"), ("--ray-address 'not an address'", "HOST:PORT")),
    Bad("ray-address-without-port", ("fallback", "{clean}", "--ray-address", "head-node", "--out",
                                     "{blocker}.plan.json"), ("--ray-address 'head-node'", "HOST:PORT")),
    Bad("custom-op-fallback", ("fallback", "{custom_op}", "--out", "{blocker}.plan.json"),
        ("FancyActivation", "com.example")),
    # random ops: every FP32 run differs (a seed too: onnxruntime draws anew on each run of a session)
    Bad("model-draws-noise", ("compare", "{noisy}"), ("draws random values in draw_noise (RandomNormalLike)",)),
    Bad("model-draws-seeded-noise", ("fallback", "{seeded_noisy}", "--out", "plan.json"),
        ("draw_noise (RandomNormalLike)",)),
    Bad("model-dropout-in-training-mode", ("compare", "{training_dropout}"), ("dropout (Dropout)",)),
]


def _hashes(folder: Path) -> dict[Path, str]:
    """Every file and folder under the folder (new ones included) and its content."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)]
                                               if c.xfail else []) for c in BAD])
def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(world, case: Bad):
    folder = world["clean"].parent
    before = _hashes(folder)
    run = run_cli(*(a.format(**world) for a in case.args), cwd=folder)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stdout + run.stderr
    assert len(lines) == 1 and lines[0].startswith("trtdebug: error:"), run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    for text in case.says:
        assert text in lines[0], lines[0]
    assert _hashes(folder) == before  # every input unchanged, no file created


def test_the_memory_check_counts_every_input_against_what_is_available(world):
    model = Model.load(world["dynamic"])
    from trtdebug.core.model.feeds import check_memory
    from trtdebug.errors import UserError

    shape = {"x": (1, 3, 256, 256)}  # 196608 floats: 0.75 MiB held twice, 1.5 MiB drawn in float64
    check_memory(model, shape, available=3 * 2**20)
    with pytest.raises(UserError, match=r"input 'x' of shape \[1, 3, 256, 256\]"):
        check_memory(model, shape, available=3 * 2**20 - 1)


def test_an_inputs_file_in_float64_is_cast_with_one_note(world):
    run = run_cli("compare", world["clean"], "--inputs", world["f64_feeds"], cwd=world["clean"].parent)
    assert run.returncode in (0, 1), run.stderr
    notes = [line for line in run.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: input 'input' is float64 in the inputs file; cast to float32"], run.stderr
    assert "note:" not in run.stdout


def test_the_dynamic_shapes_hint_names_every_input_and_runs_when_pasted(tmp_path):
    """A BERT encoder has two inputs of dynamic shape: one line names both, and its --input-shape options
    pasted back run (the hint had named the first only, so pasting it met the second)."""
    import re

    from fixtures.real_models import text_encoder

    model = text_encoder()
    first = run_cli("compare", model, cwd=tmp_path)
    lines = first.stderr.strip().splitlines()
    assert first.returncode == 2 and len(lines) == 1, first.stderr
    given = re.findall(r"--input-shape (\S+)", lines[0])
    assert sorted(g.split(":")[0] for g in given) == ["attention_mask", "input_ids"], lines[0]
    pasted = [arg for shape in given for arg in ("--input-shape", shape)]
    second = run_cli("compare", model, *pasted, "--input-range", "attention_mask:0,1", cwd=tmp_path)
    assert second.returncode in (0, 1), second.stderr
