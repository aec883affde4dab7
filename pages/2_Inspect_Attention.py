"""Inspect Attention: the image with the prompt's words under it; hover a word for its heatmap, click to pin it;
every word's map in a grid; filters."""
import streamlit as st
from PIL import Image

from ui.errors import user_errors
from ui.hover import map_size, word_hover
from ui.page import app_page
from ui.plots import COLOR_SCALES, GRID_SIDE, small_multiples


def layer_label(name: str, maps) -> str:
    """'16×16 · down_blocks.1.attentions.0.transformer_blocks.0.attn2': the layer's resolution, its UNet name."""
    height, width = maps.layer_shapes()[name]
    return f"{height}×{width} · {name.removesuffix('.processor')}"


def filters_and_display(maps, version) -> tuple[dict, float, str]:
    """The heatmap filters (passed to word_heatmap), the overlay's opacity and its colour scale."""
    with st.expander("Filters and display", expanded=True):
        resolutions = maps.resolutions()
        chosen = st.multiselect("Layer resolutions", resolutions, default=resolutions,
                                format_func=lambda r: f"{r}×{r}" if isinstance(r, int) else str(r),
                                help="Coarse layers place objects, finer layers follow edges")
        groups = maps.layer_groups()
        shown = [name for r in (chosen or resolutions) for name in groups[r]]  # grouped by resolution
        layers = st.multiselect("Layers", shown, format_func=lambda name: layer_label(name, maps),
                                placeholder="All layers at the chosen resolutions",
                                help="The model's cross-attention (attn2) layers, by resolution")
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
    return {"resolutions": chosen or None, "layers": layers or None, "step_range": (start, max(end, start + 1)), "words_only": words_only}, opacity, colorscale


def show(page, version) -> None:
    studio = page.studio
    maps = studio.maps(version)
    word_tokens = studio.word_tokens(version)
    image = Image.open(version.image_path)
    words = word_tokens.display_words()
    unknown = {w.lower() for w in word_tokens.unknown_words}

    st.caption(f"v{version.number}: hover a word (or Tab to it) to see where it attended; click to pin it, Escape "
               "unpins. Darker words drew more attention overall.")
    if unknown:
        st.warning("Unknown to this model: " + ", ".join(f"`{w}`" for w in sorted(unknown)) + ". Their maps carry no meaning.")
    left, right = st.columns([3, 2])
    with right:
        filters, opacity, colorscale = filters_and_display(maps, version)
    width, height = map_size(*image.size)
    with left:
        word_hover(image, word_tokens.words, {w: maps.word_heatmap(word_tokens, w, size=(height, width), **filters) for w in words},
                   maps.word_totals(word_tokens), key="inspect_hover", text=word_tokens.text, unknown=unknown,
                   opacity=opacity, colorscale=colorscale, version=version.id, log=page.event)

    if st.toggle("Show every word's map", value=True, key="inspect_grid"):
        grid_width, grid_height = map_size(*image.size, side=GRID_SIDE)
        grid = {w: maps.word_heatmap(word_tokens, w, size=(grid_height, grid_width), **filters) for w in words}
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
