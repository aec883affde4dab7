"""Refine, on one screen: the image is the mask canvas (tools beside it); next to it the attention sliders with Apply,
the inpaint prompt with Inpaint, and the version strip. Word cards and style keywords are one tab away.

Apply and Inpaint are requests (ui/actions.py): the page setup runs them before anything below is drawn, so the
page already shows the new version. The actions are in ui/refine.py, the panels in ui/mask_panel.py and
ui/refine_panels.py.
"""
import streamlit as st

from engine import AttuneError
from ui import mask_panel, refine_panels
from ui.actions import show_note
from ui.page import app_page
from ui.prompt_assist import rating

with app_page("refine", "Refine", one_screen=True) as page:
    version = page.current
    if page.studio is None:
        st.stop()
    if version is None:
        st.info("No image yet. Generate one first (or use “Try the example” on Home).")
        st.stop()
    if not page.enabled("sliders") and not page.enabled("inpainting"):
        st.info("Refinement tools are turned off in this study condition.")
        st.stop()
    try:
        word_tokens = page.studio.word_tokens(version)
    except AttuneError as error:
        st.error(str(error))
        st.stop()
    try:
        maps, no_maps = page.studio.maps(version), None
    except AttuneError as error:  # e.g. a version imported from a PNG: sliders still work
        maps, no_maps = None, f"No heatmaps for this version ({error}); “Mask from word” is off."
    inpainting = page.enabled("inpainting")
    tools_col, image_col, side_col = st.columns([160, 392, 348])  # px at 1280x800: tools, the image at 3x, panels
    with tools_col:
        mode, brush = mask_panel.tools(page, version, maps, word_tokens) if inpainting else ("brush", 0)
    with image_col:
        st.caption(f"**v{version.number} (current)** · seed {version.seed} · {version.prompt}")
        mask_panel.image_canvas(page, version, mode=mode, brush=brush, enabled=inpainting)
        show_note(page)  # under the image: the screen's free space
        if no_maps:
            st.caption(no_maps)
    with side_col:
        edit_tab, words_tab = st.tabs(["Edit", "Words & style"])
        with edit_tab:
            if page.enabled("sliders"):
                refine_panels.sliders_panel(page, version, word_tokens)
            if inpainting:
                refine_panels.inpaint_panel(page, version)
        with words_tab:
            refine_panels.words_tab(page, version)
        page.strip_slot = st.container()
        rating(page)
