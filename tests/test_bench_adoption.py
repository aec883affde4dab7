"""bench.adoption: a candidate replaces the built-in model only if no ruled headline falls by more than 0.02 and
every instruction row keeps 0.8."""
import copy
import json
from pathlib import Path

import pytest

from bench.adoption import compare

pytestmark = pytest.mark.light
RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def _load(name):
    return json.loads((RESULTS / name).read_text())


def test_the_shipped_model_against_itself_is_adopted():
    old, instructions = _load("refine.json"), _load("refine_instructions.json")
    result = compare(old, copy.deepcopy(old), instructions, copy.deepcopy(instructions))
    assert result["passes"] and all(r["worse_by"] == 0 for r in result["rows"])


def test_a_ruled_fall_or_a_weak_instruction_row_keeps_the_shipped_model():
    old, instructions = _load("refine.json"), _load("refine_instructions.json")
    new = copy.deepcopy(old)
    new["reweight"]["score/blend"]["w=0.5"]["area_ratio_median"] += 0.03  # a weaker slider at 0.5 (lower is better)
    assert [r["headline"] for r in compare(old, new, instructions, instructions)["rows"] if r["fails"]] == [
        "reweight area x0.5 (median)"]
    new = copy.deepcopy(old)
    new["presence"] -= 0.05  # presence is shown, ruled by the paired test (bench.refine_paired)
    assert compare(old, new, instructions, instructions)["passes"]
    weak = copy.deepcopy(instructions)
    weak["instructions"]["add {x}"]["success"] = 0.79
    result = compare(old, old, instructions, weak)
    assert not result["passes"] and [r["phrasing"] for r in result["instructions"] if r["fails"]] == ["add {x}"]


def test_the_recorded_32_wide_heads_verdict():
    """heads245_adoption.json's first check, recomputed from its files: the slider rows fail."""
    result = compare(_load("refine.json"), _load("heads245_refine_test.json"), _load("refine_instructions.json"),
                     _load("heads245_instructions_test.json"))
    recorded = {r["headline"]: r["falls_more_than_0.02"] for r in _load("heads245_adoption.json")["first_check"]["rows"]}
    assert not result["passes"]
    for row in result["rows"]:
        if row["ruled"]:
            assert row["fails"] == recorded[row["headline"]], row
