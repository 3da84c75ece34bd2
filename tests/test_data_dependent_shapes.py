"""An output whose length depends on computed values (a TTS model's durations): its shape differs in
FP16, and the tensors deciding it are the float values computed upstream of the Range."""

from __future__ import annotations

import numpy as np

from fixtures.user_models import DURATIONS, duration_expander, small_cnn
from trtdebug.core.model.data_dependent import deciding_tensors
from trtdebug.core.model.graph import Model
from trtdebug.core.plans.precision_plan import PrecisionPlan
from trtdebug.core.reference.fp32_run import run_reference
from trtdebug.engines.emulator.engine import EmulatorEngine


def test_fp16_changes_the_output_length_and_the_durations_decide_it():
    model = Model.from_proto(duration_expander())
    feeds = {"x": np.zeros(DURATIONS, np.float32)}
    reference = run_reference(model, feeds)
    emulated = EmulatorEngine().build(model, PrecisionPlan("fp16")).run(feeds)
    assert reference["y"].shape != emulated["y"].shape  # the fixture does what it says
    deciders = deciding_tensors(model, "y")
    assert "durations" in deciders and "total" in deciders and "y" not in deciders
    assert not np.array_equal(reference["durations"], emulated["durations"])


def test_an_output_whose_shape_follows_from_the_inputs_has_no_deciding_tensor():
    assert deciding_tensors(Model.from_proto(small_cnn()), "y") == []


def test_compare_says_the_shape_is_data_dependent_and_names_what_decides_it(tmp_path):
    import onnx

    from tests.cli import run_cli

    onnx.save(duration_expander(), tmp_path / "durations.onnx")
    np.savez(tmp_path / "zeros.npz", x=np.zeros(DURATIONS, np.float32))
    run = run_cli("compare", tmp_path / "durations.onnx", "--inputs", tmp_path / "zeros.npz")
    assert run.returncode == 1, run.stderr
    verdict = run.stdout.splitlines()[0]
    assert "its shape depends on computed values, decided by" in verdict and "durations" in verdict
    assert "Culprit: round (Round), tensor durations" in run.stdout
