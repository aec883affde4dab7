"""Inspect Attention: words shaded by total attention, one word's heatmap over the image, all words' maps, filters."""
import streamlit as st
from PIL import Image

from ui import page as app
from ui.errors import user_errors
from ui.plots import COLOR_SCALES, heatmap_overlay, small_multiples, word_chips_html
from ui.state import remember, remembered

page = app.setup("inspect", "Inspect Attention")


def log_word_select() -> None:
    page.event("word_select", word=st.session_state.get("inspect_word"))


studio = page.studio
version = studio.current if studio is not None else None
if studio is None:
    pass
elif not page.enabled("heatmaps"):
    st.info("Attention heatmaps are turned off in this study condition.")
elif version is None:
    st.info("No image yet. Generate one first (or use “Try the example” on Home).")
else:
    with user_errors("Reading the attention maps"):
        maps = studio.maps(version)
        word_tokens = studio.word_tokens(version)
        image = Image.open(version.image_path)
        words = list(dict.fromkeys(w for w in word_tokens.words if any(c.isalnum() for c in w)))
        unknown = {w.lower() for w in word_tokens.unknown_words}
        totals = maps.word_totals(word_tokens)

        st.caption(f"v{version.number}: “{version.prompt}”. Darker chips drew more attention overall.")
        selected = st.session_state.get("inspect_word")
        st.markdown(word_chips_html(words, totals, selected=selected, unknown=unknown), unsafe_allow_html=True)
        if unknown:
            st.warning("Unknown to this model: " + ", ".join(f"`{w}`" for w in sorted(unknown)) + ". Their maps carry no meaning.")
        if st.session_state.get("inspect_word") not in words:
            st.session_state.pop("inspect_word", None)
        word = st.pills("Word", words, key="inspect_word", on_change=log_word_select,
                        help="Pick a word to see where it attended")

        with st.expander("Filters and display", expanded=False):
            resolutions = maps.resolutions()
            chosen = st.multiselect("Layer resolutions", resolutions, default=resolutions,
                                    format_func=lambda r: f"{r}×{r}" if isinstance(r, int) else str(r),
                                    help="Coarse layers place objects, finer layers follow edges")
            last_step = int(version.steps)
            step_range = st.slider("Step range", 0, last_step, (0, last_step), key=f"inspect_steps_{version.id}",
                                   help="Early steps decide layout, late steps refine detail")
            opacity = st.slider("Heatmap opacity", 0.0, 1.0, key=remembered("opacity", 0.55), step=0.05)
            colorscale = st.selectbox("Colour scale", COLOR_SCALES, key=remembered("colorscale", "Jet"))
            remember("opacity", opacity)
            remember("colorscale", colorscale)
        start, end = step_range
        filters = {"resolutions": chosen or None, "step_range": (start, max(end, start + 1))}

        if word:
            heat = maps.word_heatmap(word_tokens, word, **filters)
            st.plotly_chart(heatmap_overlay(image, heat, opacity=opacity, colorscale=colorscale, title=f"“{word}”"),
                            key="inspect_overlay")
        else:
            st.info("Pick a word above to overlay its heatmap on the image.")

        if st.toggle("Show every word's map", value=True, key="inspect_grid"):
            grid = {w: maps.word_heatmap(word_tokens, w, **filters) for w in words}
            st.plotly_chart(small_multiples(image, grid, opacity=opacity, colorscale=colorscale), key="inspect_grid_chart")

app.finish(page)
