"""Every default and choice list a CLI option shows is the library's own constant: the CLI restates none,
so `trtdebug compare --help` and a library caller's ProblemSpec() mean the same run."""

from __future__ import annotations

from dataclasses import fields

import click
import pytest

from trtdebug.artifacts.build_flags import DEFAULT_TARGET_VERSION, FLAG_TOOLS, TARGET_VERSIONS
from trtdebug.cli.app import cli
from trtdebug.core.analysis.metrics import DEFAULT_LOCAL_SCOPE, LOCAL_SCOPES
from trtdebug.core.plans.precision_plan import PRECISIONS
from trtdebug.core.search.strategies import DEFAULT_INPUT_SEEDS, DEFAULT_STRATEGY, STRATEGIES
from trtdebug.engines import DEFAULT_ENGINE, ENGINE_NAMES
from trtdebug.engines.base import COMPARE_MARKING, MARK_MODES
from trtdebug.engines.tensorrt.support import FLAVORS
from trtdebug.workflows.problem import ProblemSpec
from trtdebug.workflows.quantize import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_GENERATED_BATCHES,
    DEFAULT_QUANTIZE_FORMAT,
    QUANTIZE_FORMATS,
    Calibration,
)

BUILDING_ENGINES = tuple(e for e in ENGINE_NAMES if e != "results")
SPEC = {f.name: f.default for f in fields(ProblemSpec)}

# (command, option) -> (the choices it must offer, the default it must show); None: not a choice / no default.
MIRRORS: dict[tuple[str, str], tuple[tuple[str, ...] | None, object]] = {
    **{(command, "--precision"): (PRECISIONS, None) for command in ("compare", "fallback", "tactics")},
    **{(command, "--engine"): (ENGINE_NAMES, DEFAULT_ENGINE) for command in ("compare", "fallback", "tactics")},
    **{(command, "--calib-method"): (CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD)
       for command in ("compare", "fallback", "tactics", "quantize", "build")},
    **{(command, "--seed"): (None, SPEC["seed"]) for command in ("compare", "fallback", "tactics", "build")},
    ("quantize", "--seed"): (None, Calibration().seed),
    ("quantize", "--calib-batches"): (None, DEFAULT_GENERATED_BATCHES),
    ("compare", "--local-error"): (LOCAL_SCOPES, DEFAULT_LOCAL_SCOPE),
    ("compare", "--mark"): (MARK_MODES, COMPARE_MARKING),
    ("fallback", "--strategy"): (STRATEGIES, DEFAULT_STRATEGY),
    ("fallback", "--input-seeds"): (None, DEFAULT_INPUT_SEEDS),
    ("build", "--engine"): (BUILDING_ENGINES, DEFAULT_ENGINE),
    ("build", "--target-version"): (TARGET_VERSIONS, DEFAULT_TARGET_VERSION),
    ("build", "--emit"): (tuple(FLAG_TOOLS), None),
    ("selfcheck", "--flavor"): (FLAVORS, None),
    ("quantize", "--format"): (QUANTIZE_FORMATS, DEFAULT_QUANTIZE_FORMAT),
    ("inspect", "--flavor"): (FLAVORS, FLAVORS[0]),
}
# Defaults that belong to the CLI alone: how much it prints, how many jobs it runs; no library default to mirror.
CLI_OWN = {("compare", "--top"), ("fallback", "--jobs"), ("tactics", "--builds")}


def _options():
    for name, command in sorted(cli.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option) and not param.is_flag and param.opts[0].startswith("--"):
                yield name, param


def _default(param: click.Option) -> object:
    """The default the option shows; None where it has none (click marks that with a sentinel)."""
    return param.default if isinstance(param.default, (str, int, float)) else None


@pytest.mark.parametrize(("command", "option"), sorted(MIRRORS), ids=lambda v: str(v))
def test_an_option_offers_and_defaults_to_the_library_constant(command, option):
    param = next(p for name, p in _options() if name == command and option in p.opts)
    choices, default = MIRRORS[command, option]
    offered = tuple(param.type.choices) if isinstance(param.type, click.Choice) else None
    assert offered == (tuple(choices) if choices is not None else None)
    assert _default(param) == default


def test_no_option_restates_a_choice_list_or_default_the_library_has_not():
    unmirrored = [(name, p.opts[0]) for name, p in _options()
                  if (isinstance(p.type, click.Choice) or _default(p) is not None)
                  and (name, p.opts[0]) not in MIRRORS and (name, p.opts[0]) not in CLI_OWN]
    assert unmirrored == []


def test_one_calibration_method_default_everywhere():
    assert SPEC["calib_method"] == Calibration().method == DEFAULT_CALIBRATION_METHOD
