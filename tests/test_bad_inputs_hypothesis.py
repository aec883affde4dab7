"""The bad-input suite (bench/bad_inputs.py), a bounded share in CI: hypothesis cases over every subcommand's
options and over PNG metadata. Each case must be refused with one `error:` line, exit != 0, no traceback, no model
load, and leave the working folder (the study database included) byte-identical. The full run:
`python -m bench.bad_inputs --json`.
"""
import json

import pytest
from hypothesis import HealthCheck, given, settings

from bench import bad_inputs

EXAMPLES = 12  # per family: about 70 cases, a few seconds each family on 2 cores
BOUNDED = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return bad_inputs.make_template(tmp_path_factory.mktemp("bad-inputs-template"))


@pytest.mark.parametrize("family", sorted(bad_inputs.STRATEGIES))
def test_bad_inputs_are_refused_cleanly(family, template):
    @BOUNDED
    @given(bad_inputs.STRATEGIES[family])
    def refused_cleanly(case):
        assert bad_inputs.run_case(case, template) == [], case

    refused_cleanly()


def test_the_harness_sees_each_defect(template, monkeypatch):
    """The checks can fail: a model load, a second stderr line, a raw ESC and a new file are each reported."""
    import engine.cli

    case = bad_inputs.Case("generate:steps", ["generate", "--prompt", "moon", "--out", "out", "--steps", "0"])
    assert bad_inputs.run_case(case, template) == []
    monkeypatch.setattr(engine.cli, "_check_run", lambda params, model: params)  # the checks skipped
    assert bad_inputs.run_case(case, template) == ["model loaded before the input was refused"]
    monkeypatch.undo()

    def noisy(args):
        import sys
        from pathlib import Path

        Path("stray.txt").write_text("x")
        print("note: \x1b[31m", file=sys.stderr)
        raise engine.cli.AttuneError("bad")

    monkeypatch.setitem(engine.cli.COMMANDS, "generate", noisy)
    found = bad_inputs.run_case(case, template)
    assert any(d.startswith("not one `error:` line") for d in found)
    assert any(d.startswith("raw control characters") for d in found)
    assert any(d.startswith("working folder changed: ['stray.txt']") for d in found)


def test_bench_counts_per_class(template, tmp_path):
    report = bad_inputs.run_all(3, template)
    assert report["defects"] == 0, report["defect_examples"]
    assert report["cases"] == sum(report["by_class"].values()) >= 6 * 3
    assert json.loads(json.dumps(report)) == report
