"""Inspect Attention: words shaded by total attention, one word's heatmap over the image, all words' maps, filters."""
import streamlit as st
from PIL import Image

from ui.errors import user_errors
from ui.page import app_page
from ui.plots import COLOR_SCALES, heatmap_overlay, small_multiples, word_chips_html
from ui.state import Keys


def log_word_select(page) -> None:
    page.event("word_select", word=st.session_state.get(Keys.INSPECT_WORD))


def show(page, version) -> None:
    studio = page.studio
    maps = studio.maps(version)
    word_tokens = studio.word_tokens(version)
    image = Image.open(version.image_path)
    words = word_tokens.display_words()
    unknown = {w.lower() for w in word_tokens.unknown_words}
    totals = maps.word_totals(word_tokens)

    st.caption(f"v{version.number}: “{version.prompt}”. Darker chips drew more attention overall.")
    selected = st.session_state.get(Keys.INSPECT_WORD)
    st.markdown(word_chips_html(words, totals, selected=selected, unknown=unknown), unsafe_allow_html=True)
    if unknown:
        st.warning("Unknown to this model: " + ", ".join(f"`{w}`" for w in sorted(unknown)) + ". Their maps carry no meaning.")
    if selected not in words:
        st.session_state.pop(Keys.INSPECT_WORD, None)
    word = st.pills("Word", words, key=Keys.INSPECT_WORD, on_change=log_word_select, args=(page,),
                    help="Pick a word to see where it attended")

    with st.expander("Filters and display", expanded=False):
        resolutions = maps.resolutions()
        chosen = st.multiselect("Layer resolutions", resolutions, default=resolutions,
                                format_func=lambda r: f"{r}×{r}" if isinstance(r, int) else str(r),
                                help="Coarse layers place objects, finer layers follow edges")
        last_step = int(version.steps)
        step_range = st.slider("Step range", 0, last_step, tuple(min(x, last_step) for x in maps.default_step_range()), key=f"inspect_steps_{version.id}",
                               help="Early steps decide layout, late steps refine detail (default: the last half)")
        words_only = st.toggle("Share of the prompt's words", value=True, key="inspect_words_only",
                               help="Each pixel's attention to the word over its attention to all the prompt's "
                                    "words (off: the raw attention, which the start token dims unevenly)")
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.55, step=0.05, key="inspect_opacity", persist_state="session")
        colorscale = st.selectbox("Colour scale", COLOR_SCALES, COLOR_SCALES.index("Jet"), key="inspect_colorscale",
                                  persist_state="session")
    start, end = step_range
    filters = {"resolutions": chosen or None, "step_range": (start, max(end, start + 1)), "words_only": words_only}

    if word:
        heat = maps.word_heatmap(word_tokens, word, **filters)
        st.plotly_chart(heatmap_overlay(image, heat, opacity=opacity, colorscale=colorscale, title=f"“{word}”"),
                        key="inspect_overlay")
    else:
        st.info("Pick a word above to overlay its heatmap on the image.")

    if st.toggle("Show every word's map", value=True, key="inspect_grid"):
        grid = {w: maps.word_heatmap(word_tokens, w, **filters) for w in words}
        st.plotly_chart(small_multiples(image, grid, opacity=opacity, colorscale=colorscale), key="inspect_grid_chart")


with app_page("inspect", "Inspect Attention") as page:
    if page.studio is None:
        st.stop()
    if not page.enabled("heatmaps"):
        st.info("Attention heatmaps are turned off in this study condition.")
    elif page.current is None:
        st.info("No image yet. Generate one first (or use “Try the example” on Home).")
    else:
        with user_errors("Reading the attention maps"):
            show(page, page.current)
