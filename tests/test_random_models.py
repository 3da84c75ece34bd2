"""Why a model drawing random values is refused rather than seeded: onnxruntime draws anew on every
run of a session, seed or not, and trtdebug runs each graph many times. If this ever stops holding,
seeding the random ops (core.reference.random_ops) becomes an option."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from fixtures.user_models import TOKENS_SHAPE, noisy_decoder


def test_a_seeded_random_op_draws_new_values_on_every_run_of_one_session():
    session = ort.InferenceSession(noisy_decoder(seeded=True).SerializeToString(), providers=["CPUExecutionProvider"])
    x = {"x": np.ones(TOKENS_SHAPE, np.float32)}
    first, second = session.run(None, x)[0], session.run(None, x)[0]
    assert not np.array_equal(first, second)
