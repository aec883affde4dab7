"""App-wide CSS, sent by every page's setup (style-only st.html goes to Streamlit's event container: no space taken).

While a page run waits on the engine, Streamlit dims the elements not yet redrawn ("stale") with a 1 s opacity fade
that starts after 0.5 s. With a page of ~50 elements that fade is a full-page animation for the whole generation,
and the browser's compositing took ~0.5 CPU s per Generate click, CPU the engine needs when the browser and the
server share a small machine (bench/click_breakdown.py). Here the dim keeps its delay and its final look, but
arrives in one step instead of a fade.
"""
from __future__ import annotations

import streamlit as st

STALE_DELAY_S = 0.5  # Streamlit's own delay before stale elements dim: quick reruns never dim the page

# Expanders dim their border and content the same way (their delays are kept, only the fades go); the progress bar
# slides between its values, an animation after every redraw.
STYLE = f"""<style>
[data-testid="stElementContainer"][data-stale="true"] {{ transition: opacity 0s linear {STALE_DELAY_S}s !important; }}
[data-testid="stExpander"], [data-testid="stExpander"] *, [data-testid="stProgress"] * {{ transition-duration: 0s !important; }}
</style>"""


# One-screen pages (Refine at 1280x800): less padding above and below, a smaller title, tighter element gaps.
COMPACT = """<style>
[data-testid="stMainBlockContainer"] { padding: 3.6rem 1.5rem 0.5rem 1.5rem !important; }
h1 { font-size: 1.5rem !important; padding: 0 !important; }
[data-testid="stMainBlockContainer"] [data-testid="stVerticalBlock"] { gap: 0.55rem; }
</style>"""


def apply() -> None:
    st.html(STYLE)


def compact() -> None:
    st.html(COMPACT)
