"""Study analysis for the researcher dashboard: per-participant measures from the log and a comparison of conditions.

Measures (one row per participant and condition): versions made (explore grid cells included, and counted apart
as explore_cells), median seconds between a session's versions,
mean star rating (1-5, the last rating of each version counts), and how often each feature was used (event rows).
Conditions are compared per measure with a rank test from scipy: Mann-Whitney U (two-sided) for two conditions with
the rank-biserial correlation as effect size, Kruskal-Wallis for more with epsilon squared. No streamlit here.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from engine.errors import AttuneError

# event actions -> the feature they use (the ablation switches of the conditions file)
FEATURE_ACTIONS = {
    "word_cards": ("card_delete", "card_replace", "card_add_keyword"),
    "explore": ("explore_open", "explore", "alternative_chosen"),
    "suggest": ("suggest_request", "suggest_accept", "suggest_reject"),
    "sliders": ("slider_change", "apply"),
    "inpainting": ("inpaint", "mask_strokes", "mask_from_word"),
    "heatmaps": ("word_hover", "word_pin", "word_select"),  # word_select: the click flow of logs before hover
    "compare": ("compare",),
}
RATING_ACTION = "rate"
RESEARCHER_PAGE = "researcher"
BASE_MEASURES = ("versions", "explore_cells", "seconds_per_version", "mean_rating")


def _payload(value) -> dict:
    if isinstance(value, dict):
        return value
    try:
        loaded = json.loads(value or "{}")
    except (TypeError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def ratings(events: pd.DataFrame) -> pd.DataFrame:
    """One row per rated version: its last rating (1-5) by that participant."""
    columns = ["participant_id", "session_id", "condition", "version_id", "stars"]
    if events is None or events.empty:
        return pd.DataFrame(columns=columns)
    rows = events[events["action"] == RATING_ACTION].sort_values("id" if "id" in events else "ts")
    found = []
    for row in rows.to_dict("records"):
        payload = _payload(row.get("payload"))
        stars = payload.get("stars")
        if isinstance(stars, (int, float)) and 1 <= stars <= 5 and payload.get("version_id"):
            found.append({"participant_id": row["participant_id"], "session_id": row["session_id"],
                          "condition": row["condition"], "version_id": payload["version_id"], "stars": float(stars)})
    frame = pd.DataFrame(found, columns=columns)
    return frame.drop_duplicates(["participant_id", "version_id"], keep="last").reset_index(drop=True)


def participant_table(versions: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, participant_id) with every measure; feature use columns are `use_<feature>`."""
    versions = versions if versions is not None else pd.DataFrame()
    events = events if events is not None else pd.DataFrame()
    if not events.empty and "page" in events.columns:  # the researcher's own page views are not study data
        events = events[events["page"] != RESEARCHER_PAGE]
    keys = ["condition", "participant_id"]
    frames = [frame[keys] for frame in (versions, events) if not frame.empty and set(keys) <= set(frame.columns)]
    if not frames:
        raise AttuneError("The log has no versions or events to analyse yet.")
    table = pd.concat(frames).drop_duplicates().fillna("").sort_values(keys).reset_index(drop=True)
    table["condition"] = table["condition"].astype(str)

    if not versions.empty:
        counts = versions.groupby(keys).size().rename("versions")  # every version, explore grid cells included
        cells = versions[versions["kind"] == "explore"].groupby(keys).size().rename("explore_cells")
        timed = versions.assign(created=pd.to_datetime(versions["created_at"], utc=True, errors="coerce"))
        timed = timed.sort_values("created")
        timed["gap"] = timed.groupby("session_id")["created"].diff().dt.total_seconds()
        gaps = timed.dropna(subset=["gap"]).groupby(keys)["gap"].median().rename("seconds_per_version")
        table = table.join(counts, on=keys).join(cells, on=keys).join(gaps, on=keys)
    else:
        table["versions"], table["explore_cells"], table["seconds_per_version"] = 0, 0, np.nan
    for column in ("versions", "explore_cells"):
        table[column] = table[column].fillna(0).astype(int)

    rated = ratings(events)
    mean_rating = rated.groupby(keys)["stars"].mean().rename("mean_rating") if not rated.empty else None
    table = table.join(mean_rating, on=keys) if mean_rating is not None else table.assign(mean_rating=np.nan)

    for feature, actions in FEATURE_ACTIONS.items():
        column = f"use_{feature}"
        if events.empty:
            table[column] = 0
            continue
        used = events[events["action"].isin(actions)].groupby(keys).size().rename(column)
        table = table.join(used, on=keys)
        table[column] = table[column].fillna(0).astype(int)
    return table


def measures(table: pd.DataFrame) -> list[str]:
    return [m for m in BASE_MEASURES if m in table] + [c for c in table if c.startswith("use_")]


def compare_conditions(table: pd.DataFrame, measure_names: list[str] | None = None) -> pd.DataFrame:
    """Per measure: n and median per condition, the test, its statistic and p value, and the effect size.

    Two conditions: Mann-Whitney U (two-sided); effect = rank-biserial r = 2*U1/(n1*n2) - 1, positive when the
    first condition (alphabetical) ranks higher. More: Kruskal-Wallis H; effect = epsilon squared = H / (n - 1).
    A measure with fewer than two values in some condition, or no variation at all, gets no test (a note says why)."""
    from scipy import stats

    conditions = sorted(table["condition"].astype(str).unique())
    if len(conditions) < 2:
        raise AttuneError("Comparing conditions needs participants in at least two conditions.")
    rows = []
    for measure in measure_names or measures(table):
        groups = [table.loc[table["condition"] == c, measure].dropna().astype(float).to_numpy() for c in conditions]
        row: dict = {"measure": measure}
        for condition, values in zip(conditions, groups):
            row[f"n {condition}"] = len(values)
            row[f"median {condition}"] = float(np.median(values)) if len(values) else np.nan
        row.update(test="", statistic=np.nan, p_value=np.nan, effect_size=np.nan, effect="", note="")
        pooled = np.concatenate(groups)
        if any(len(values) < 2 for values in groups):
            row["note"] = "fewer than 2 values in a condition"
        elif np.ptp(pooled) == 0:
            row["note"] = "no variation"
        elif len(conditions) == 2:
            first, second = groups
            result = stats.mannwhitneyu(first, second, alternative="two-sided")
            row.update(test="Mann-Whitney U", statistic=float(result.statistic), p_value=float(result.pvalue),
                       effect_size=2 * float(result.statistic) / (len(first) * len(second)) - 1,
                       effect=f"rank-biserial r ({conditions[0]} vs {conditions[1]})")
        else:
            result = stats.kruskal(*groups)
            row.update(test="Kruskal-Wallis H", statistic=float(result.statistic), p_value=float(result.pvalue),
                       effect_size=float(result.statistic) / (len(pooled) - 1), effect="epsilon squared")
        rows.append(row)
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean per condition of every measure, plus the number of participants (for the side-by-side view)."""
    grouped = table.groupby("condition")[measures(table)].mean()
    grouped.insert(0, "participants", table.groupby("condition").size())
    return grouped.reset_index()
