"""The hover component's Python side (ui/hover): what goes to the browser, and how a batch of browser events is
taken (each event once, only known actions and words). The browser side is tested in tests/test_e2e_hover.py."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from ui.hover import new_events
from ui.hover.payload import colour_table, hover_payload, map_size, prompt_pieces

pytestmark = pytest.mark.light  # no torch: the light install runs these too


def test_maps_travel_at_most_64_px_long_in_the_image_aspect():
    assert map_size(128, 128) == (64, 64)
    assert map_size(1024, 768) == (64, 48)
    assert map_size(40, 30) == (40, 30)  # never larger than the image


def test_prompt_pieces_keep_the_text_and_name_each_mapped_word():
    text = "a wolf,  night-sky"
    pieces = prompt_pieces(text, ["a", "wolf", ",", "night", "-", "sky"], {"wolf", "night", "sky"})
    assert "".join(p["text"] for p in pieces) == text
    assert [p["word"] for p in pieces if p["word"]] == ["wolf", "night", "sky"]
    assert [p["text"] for p in pieces if not p["word"]] == ["a", " ", ",", "  ", "-"]
    assert [p["text"] for p in prompt_pieces(None, ["Moon", "sky"], {"moon"})] == ["Moon", " ", "sky"]


def test_colour_table_is_plotlys_scale_at_256_levels():
    table = colour_table("Jet")
    assert len(table) == 256 * 6 and table.startswith("000083") and table.endswith("800000")
    assert colour_table("Viridis") != table


def test_payload_sends_each_words_map_as_8_bit_png_with_its_shade():
    image = Image.new("RGB", (128, 96), "navy")
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    data = hover_payload(image, ["Moon", "sky"], {"Moon": ramp, "sky": ramp[::-1]}, {"Moon": 2.0, "sky": 0.5},
                         pinned="MOON", unknown=["sky"], text="Moon sky")
    assert data["map_size"] == [64, 48] and data["aspect"] == [128, 96] and data["pinned"] == "moon"
    moon = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["maps"]["moon"]["png"]))))
    assert moon.dtype == np.uint8 and moon.shape == (48, 64) and moon[0, 0] == 0 and moon[0, -1] == 255
    assert data["maps"]["moon"]["shade"] == 1.0 and data["maps"]["sky"]["shade"] == 0.25
    assert data["maps"]["sky"]["unknown"] and not data["maps"]["moon"]["unknown"]
    assert data["image"].startswith("data:image/png;base64,")
    assert hover_payload(image, [], {"sky": ramp}, {}, pinned="wolf")["pinned"] is None  # not a word of this version
    big = hover_payload(Image.new("RGB", (1024, 768)), [], {"sky": ramp}, {})
    assert big["image"].startswith("data:image/jpeg;base64,")  # shrunk to 512 px for the screen


def test_a_batch_is_taken_once_and_only_known_actions_and_words_count():
    labels = {"moon": "Moon", "wolf": "wolf"}
    seen: dict = {}
    batch = {"mount": "a", "events": [
        {"seq": 1, "action": "hover", "word": "moon", "via": "pointer", "version": "v1"},
        {"seq": 2, "action": "pin", "word": "wolf", "version": "v1"},
        {"seq": 3, "action": "hover", "word": "sun", "version": "v1"},      # not a word of this version
        {"seq": 4, "action": "delete", "word": "moon", "version": "v1"},    # not an action
        {"seq": 5, "action": "hover", "word": "wolf", "via": "telepathy"},  # an unknown way in reads as pointer
    ]}
    assert new_events(batch, seen, labels) == [
        {"action": "word_hover", "word": "Moon", "version": "v1", "via": "pointer"},
        {"action": "word_pin", "word": "wolf", "version": "v1"},
        {"action": "word_hover", "word": "wolf", "version": None, "via": "pointer"}]
    assert new_events(batch, seen, labels) == []  # the browser repeats recent events: each is logged once
    batch["events"] = batch["events"][-1:] + [{"seq": 6, "action": "unpin", "word": "wolf"}]
    assert [e["action"] for e in new_events(batch, seen, labels)] == ["word_unpin"]
    reloaded = {"mount": "b", "events": [{"seq": 1, "action": "hover", "word": "moon", "via": "keyboard"}]}
    assert new_events(reloaded, seen, labels)[0]["via"] == "keyboard"  # a new mount counts from its own start
    assert new_events("junk", seen, labels) == [] and new_events({"events": [7]}, seen, labels) == []
