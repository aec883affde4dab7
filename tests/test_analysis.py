"""Researcher analysis on a synthetic study log with known differences between conditions."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from engine.study.analysis import compare_conditions, participant_table, ratings, summary
from engine.errors import AttuneError
from engine.study.log import StudyLog
from engine.study.versions import Version

START = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def synthetic_log(path, plan: dict[str, list[tuple[int, int, int]]]) -> StudyLog:
    """plan: condition -> per participant (versions, seconds between versions, stars given to each version).
    Condition "full" participants also explore once per version."""
    log = StudyLog(path)
    for condition, people in plan.items():
        for k, (count, gap, stars) in enumerate(people):
            pid, sid = f"{condition}-P{k}", f"{condition}-s{k}"
            ids = dict(participant_id=pid, session_id=sid, study_id="synthetic", condition=condition)
            for n in range(count):
                created = (START + timedelta(seconds=gap * n)).isoformat()
                kind = "explore" if condition == "full" and n % 2 else "generate"
                version = Version(number=n + 1, kind=kind, prompt="a moon", created_at=created, **ids)
                log.add_version(version)
                log.add_event("generate", "rate", {"version_id": version.id, "stars": 1}, **ids)  # overwritten next
                log.add_event("generate", "rate", {"version_id": version.id, "stars": stars}, **ids)
                if condition == "full":
                    log.add_event("generate", "explore", {"word": "moon"}, **ids)
    return log


def test_two_conditions_mann_whitney_with_rank_biserial(tmp_path):
    plan = {
        "full": [(8 + k % 3, 20, 4 + k % 2) for k in range(6)],
        "no_prompt_assist": [(3 + k % 2, 40, 2 + k % 2) for k in range(6)],
    }
    log = synthetic_log(tmp_path / "log.db", plan)
    table = participant_table(log.versions_df(), log.events_df())
    assert len(table) == 12
    full = table[table.condition == "full"].set_index("participant_id")
    assert full.loc["full-P1", "versions"] == 9 and full.loc["full-P1", "seconds_per_version"] == 20
    assert full.loc["full-P1", "mean_rating"] == 5 and full.loc["full-P1", "use_explore"] == 9
    assert full.loc["full-P1", "explore_cells"] == 4
    assert (table[table.condition == "no_prompt_assist"].use_explore == 0).all()
    result = compare_conditions(table).set_index("measure")
    for measure, sign in (("versions", 1), ("seconds_per_version", -1), ("mean_rating", 1), ("use_explore", 1)):
        row = result.loc[measure]
        assert row.test == "Mann-Whitney U" and row.p_value < 0.01, (measure, row.p_value)
        assert row.effect_size == pytest.approx(sign * 1.0)  # complete separation of the two groups
    assert result.loc["versions", "median full"] == 9 and result.loc["versions", "n no_prompt_assist"] == 6
    assert result.loc["use_sliders", "note"] == "no variation" and np.isnan(result.loc["use_sliders", "p_value"])
    means = summary(table).set_index("condition")
    assert means.loc["full", "participants"] == 6 and means.loc["no_prompt_assist", "mean_rating"] == 2.5


def test_three_conditions_kruskal_wallis_with_epsilon_squared(tmp_path):
    from scipy import stats

    plan = {name: [(base + k, 30, 3) for k in range(4)] for name, base in (("a", 2), ("b", 10), ("c", 20))}
    log = synthetic_log(tmp_path / "log.db", plan)
    table = participant_table(log.versions_df(), log.events_df())
    row = compare_conditions(table, ["versions"]).iloc[0]
    h = stats.kruskal([2, 3, 4, 5], [10, 11, 12, 13], [20, 21, 22, 23]).statistic
    assert row.test == "Kruskal-Wallis H" and row.statistic == pytest.approx(h) and row.p_value < 0.05
    assert row.effect_size == pytest.approx(h / 11)


def test_same_distributions_show_no_effect_and_small_logs_are_clear(tmp_path):
    plan = {"x": [(4, 30, 3), (6, 30, 3), (5, 30, 3)], "y": [(6, 30, 3), (4, 30, 3), (5, 30, 3)]}
    log = synthetic_log(tmp_path / "log.db", plan)
    table = participant_table(log.versions_df(), log.events_df())
    row = compare_conditions(table, ["versions"]).iloc[0]
    assert row.effect_size == pytest.approx(0.0) and row.p_value == pytest.approx(1.0)
    assert len(ratings(log.events_df())) == 30  # one (the last) rating per version
    with pytest.raises(AttuneError, match="at least two conditions"):
        compare_conditions(table[table.condition == "x"])
    empty = StudyLog(tmp_path / "empty.db")
    with pytest.raises(AttuneError, match="no versions or events"):
        participant_table(empty.versions_df(), empty.events_df())


def test_the_researchers_own_events_are_left_out(tmp_path):
    log = synthetic_log(tmp_path / "log.db", {"x": [(2, 10, 3)]})
    log.add_event("researcher", "researcher_login", {}, participant_id="admin", condition="x")
    table = participant_table(log.versions_df(), log.events_df())
    assert list(table.participant_id) == ["x-P0"]
