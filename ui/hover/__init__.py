"""Hover heatmaps: the image with the prompt's words along it; hovering (or focusing) a word overlays its map.

A Streamlit `st.components.v2` component with plain files beside this one (hover.js, hover.css; no build step).
Every word's map goes to the browser with the image, so a hover draws the map in the browser with no server round
trip. Hovers are batched in the browser (ui/hover/hover.js: a word counts after 300 ms, one batch per second at
most), pins and unpins are sent at once. Each batch is one rerun; the component's callback logs it before the page
runs, so the pin is already in that run's draw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import streamlit as st
from PIL import Image

from ui import state
from ui.hover.payload import hover_payload, map_size

HERE = Path(__file__).parent
COMPONENT = st.components.v2.component(
    "attune_hover", js=(HERE / "hover.js").read_text(), css=(HERE / "hover.css").read_text())
ACTIONS = {"hover": "word_hover", "pin": "word_pin", "unpin": "word_unpin"}  # browser event -> events-table action
VIA = ("pointer", "keyboard")

__all__ = ["HoverState", "map_size", "word_hover"]


@dataclass
class HoverState:
    pinned: str | None                                 # the pinned word as spelled in `heatmaps`, or None
    events: list[dict] = field(default_factory=list)   # this run's new events: {"action", "word", "version", "via"}


def new_events(batch, seen: dict, labels: dict[str, str]) -> list[dict]:
    """The events of a browser batch ({"mount", "events": [{"seq", "action", "word", ...}]}) not taken before,
    kept only where they name a known action and one of the words drawn (`labels`: lower case -> as spelled).
    `seen` ({"mount", "seq"}) is updated: a batch repeats recent events, and a new mount starts its own count."""
    if not isinstance(batch, dict) or not isinstance(batch.get("events"), list):
        return []
    mount = str(batch.get("mount", ""))
    last = seen.get("seq", 0) if seen.get("mount") == mount else 0
    events = []
    for item in batch["events"]:
        seq = item.get("seq") if isinstance(item, dict) else None
        if not isinstance(seq, int) or seq <= last:
            continue
        last = seq
        if item.get("action") not in ACTIONS or item.get("word") not in labels:
            continue
        event = {"action": ACTIONS[item["action"]], "word": labels[item["word"]], "version": item.get("version")}
        if item["action"] == "hover":
            event["via"] = item.get("via") if item.get("via") in VIA else "pointer"
        events.append(event)
    seen.update(mount=mount, seq=last)
    return events


def _take_events(key: str, labels: dict[str, str], log) -> None:
    """The component's callback, at the start of the run after a batch: log its events and keep the pin."""
    entry = state.session().hover.setdefault(key, {})
    events = new_events((st.session_state.get(key) or {}).get("events"), entry, labels)
    for event in events:
        if event["action"] == "word_pin":
            entry["pinned"] = event["word"].lower()
        elif event["action"] == "word_unpin" and entry.get("pinned") == event["word"].lower():
            entry["pinned"] = None
        if log is not None:
            log(event["action"], **{k: v for k, v in event.items() if k != "action"})
    entry["events"] = entry.get("events", []) + events


def word_hover(image: Image.Image, words: list[str], heatmaps: dict[str, np.ndarray], totals: dict[str, float], *,
               key: str, height: int = 384, text: str | None = None, unknown=(), opacity: float = 0.55,
               colorscale: str = "Jet", version: str | None = None,
               log: Callable[..., object] | None = None) -> HoverState:
    """Draw the image with the prompt's words under it; return the pinned word and the hover events new this run.

    image: the version's image. words: the prompt's words in order, repeats and punctuation included
    (WordTokens.words). heatmaps: display word -> its [0, 1] map, best at `map_size(*image.size)` (the maps follow
    whatever filters the caller used). totals: word -> total attention; each word is shaded by its share of the
    largest. key: a Streamlit key, one per place on a page (the pin is kept per key, in the session).
    height: the image's height on screen in CSS px (it narrows to fit its column). text: the prompt text `words`
    came from (WordTokens.text), so spaces and punctuation show as typed. unknown: words the model does not know
    (struck through). opacity, colorscale: the overlay's (ui.plots.COLOR_SCALES). version: the version id, logged
    with each event. log: called as log(action, word=..., version=..., [via=...]) for every event, e.g. page.event;
    actions "word_hover" (a word shown for 300 ms, by "pointer" or "keyboard" focus), "word_pin", "word_unpin".

    In the browser: hover or focus (Tab) a word to overlay its map; click it (or Enter) to pin it, click again to
    unpin; Escape unpins. A pinned word shows whenever no other word is hovered.
    """
    labels = {word.lower(): word for word in heatmaps}
    entry = state.session().hover.setdefault(key, {})
    pinned = entry.get("pinned") if entry.get("pinned") in labels else None
    events, entry["events"] = entry.get("events", []), []
    payload = hover_payload(image, words, heatmaps, totals, text=text, unknown=unknown, pinned=pinned,
                            opacity=opacity, colorscale=colorscale, version=version)
    payload.update(instance=key, height=int(height))
    COMPONENT(key=key, data=payload, height="content", on_events_change=partial(_take_events, key, labels, log))
    return HoverState(pinned=labels.get(pinned) if pinned else None, events=events)
