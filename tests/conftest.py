"""Shared fixtures: planted-defect models written once per session, the real Silero VAD model."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import planted
from fixtures.real_models import silero_vad


@pytest.fixture(scope="session")
def planted_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, planted.Planted]]:
    return planted.write_all(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def silero_path() -> Path:
    return silero_vad()


SILERO_SHAPES = ("input:1x512", "state:2x1x128")
SILERO_RANGES = ("sr:16000,16000",)  # the model branches on its sample rate input
