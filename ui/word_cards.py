"""Word cards: each word of the current version's prompt is a card, shaded by its total attention, with Delete,
Replace (similar and different alternatives, or any typed word) and Explore; plus "add a style keyword".

Delete, Replace and Add keyword are requests (ui/actions.py, handled in ui/word_edits.py): recorded at the click and
served by the next page setup, before the page is drawn, so the page shows the new version (same seed as its parent)
and the strip lists it. Every action is an event row.
"""
from __future__ import annotations

import html
from typing import Callable

import streamlit as st

from engine import AttuneError, known_words, prompt_words, style_keyword_list, word_alternatives
from ui.actions import submit
from ui.explore import explore_panel, open_explore

PER_ROW = 6


def _attention(page, version) -> tuple[dict[str, float], set[str]]:
    """Total attention per (lower-case) word, and the words the model does not know; empty when heatmaps are off."""
    if not page.enabled("heatmaps"):
        return {}, set()
    try:
        word_tokens = page.studio.word_tokens(version)
        totals = page.studio.maps(version).word_totals(word_tokens)
    except AttuneError:  # e.g. a version imported from a PNG has no maps
        return {}, set()
    lowered: dict[str, float] = {}
    for word, total in totals.items():
        lowered[word.lower()] = lowered.get(word.lower(), 0.0) + float(total)
    return lowered, {w.lower() for w in word_tokens.unknown_words}


def chip_html(word: str, total: float | None, top: float, unknown: bool) -> str:
    """One word chip, darker for more attention (the Inspect page's shading)."""
    share = (total or 0.0) / top if total is not None and top > 0 else 0.0
    style = (f"background: rgba(91, 75, 219, {0.08 + 0.72 * share:.2f}); color: {'white' if share > 0.55 else 'black'};"
             " border: 1px solid #ccc; border-radius: 12px; padding: 2px 9px; display: inline-block;")
    text = f"<s>{html.escape(word)}</s> ?" if unknown else html.escape(word)
    title = "unknown to this model" if unknown else (f"total attention {total:.3g}" if total is not None else word)
    return f'<span class="attune-chip" title="{html.escape(title)}" style="{style}">{text}</span>'


def _label(options: dict) -> Callable[[str], str]:
    def show(text: str) -> str:
        found = options.get(text)
        if found is None:
            return text
        mark = " · unknown to this model" if found.known is False else ""
        return f"{text} · {found.relation} ({found.group}){mark}"

    return show


def _replace(page, version_id: str, index: int, word: str, key: str) -> None:
    """Replace's click: the request carries the word picked (or typed) in the card's selectbox."""
    submit(page, "card_replace", {"version_id": version_id, "index": index, "word": word}, reads={"replacement": key})


def _add_keyword(page, version_id: str, key: str) -> None:
    submit(page, "card_add_keyword", {"version_id": version_id}, reads={"keyword": key})


def word_cards(page) -> None:
    """The cards for the current version (and the Explore panel); nothing when both features are off."""
    studio = page.studio
    version = studio.current if studio is not None else None
    cards_on, explore_on = page.enabled("word_cards"), page.enabled("explore")
    if version is None or not (cards_on or explore_on):
        return
    words = prompt_words(version.prompt)
    if not words:
        return
    totals, unknown = _attention(page, version)
    top = max(totals.values(), default=0.0)
    known = known_words(studio)
    st.subheader("Words")
    st.caption(f"Each word of v{version.number}'s prompt" + (", darker for more attention" if totals else "")
               + f". Changes make a new version with the same seed ({version.seed}).")
    for start in range(0, len(words), PER_ROW):
        for column, word in zip(st.columns(PER_ROW), words[start:start + PER_ROW]):
            lower = word.text.lower()
            with column.container(border=True, key=f"word_card_{page.name}_{word.index}"):
                st.markdown(chip_html(word.text, totals.get(lower) if totals else None, top, lower in unknown),
                            unsafe_allow_html=True)
                with st.popover("Edit", icon=":material/edit:", width="stretch"):
                    prefix = f"card_{page.name}_{version.id}_{word.index}"
                    if cards_on:
                        st.button("Delete", key=f"{prefix}_delete", icon=":material/delete:", on_click=submit,
                                  args=(page, "card_delete",
                                        {"version_id": version.id, "index": word.index, "word": word.text}))
                        options = {a.text: a for a in word_alternatives(word.text, known)}
                        st.selectbox("Replace with", list(options), index=None, key=f"{prefix}_pick",
                                     format_func=_label(options), accept_new_options=True,
                                     placeholder="pick or type a word", help="similar alternatives first, then different ones")
                        st.button("Replace", key=f"{prefix}_replace", icon=":material/swap_horiz:",
                                  on_click=_replace, args=(page, version.id, word.index, word.text, f"{prefix}_pick"))
                    if explore_on:
                        st.button("Explore", key=f"{prefix}_explore", icon=":material/grid_view:",
                                  on_click=open_explore, args=(page, version.id, word.index, word.text),
                                  help="A grid of this prompt with the word replaced, all with the same seed")
    if cards_on:
        key = f"card_keyword_{page.name}_{version.id}"
        pick_col, add_col = st.columns([3, 1], vertical_alignment="bottom")
        pick_col.selectbox("Add a style keyword", style_keyword_list(), index=None, key=key, accept_new_options=True,
                           placeholder="type to search: lighting, medium, mood…")
        add_col.button("Add keyword", icon=":material/add:", on_click=_add_keyword, args=(page, version.id, key))
    if explore_on:
        explore_panel(page)
