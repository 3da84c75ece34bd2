"""Models whose FP32 run is not a fixed function of their inputs: ops that draw random values."""

from __future__ import annotations

RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                        "Multinomial"})
