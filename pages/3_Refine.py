"""Refine: per-word attention sliders (same seed), and mask + inpaint with a drawing canvas.

Apply and Inpaint run at the top of the script, in the run their click starts, so everything below already shows
the new version (no st.rerun, which could leave the browser with a half-replaced page while the canvas remounts).
"""
import streamlit as st
from PIL import Image

from engine.errors import AttuneError
from engine.layout import DEFAULT_LAYOUT, LAYOUT_MODES
from ui import canvas, history, page as app, refine_notes
from ui.cards import focus_badges
from ui.errors import user_errors
from ui.jobs import run_with_progress
from ui.state import remember, remembered

page = app.setup("refine", "Refine")
METHODS = {m: refine_notes.METHOD_WHAT.get(m, m) for m in ("score", "prob", "embed")}
MARKS = "the word's weight: 0 off · 0.5 less · 1 unchanged · 1.5 more · 2 much more (measured effects under Method)"


def slider_words(word_tokens) -> list[str]:
    words = list(dict.fromkeys(w.lower() for w in word_tokens.words if any(c.isalnum() for c in w)))
    return words + [p for p in st.session_state.get("refine_phrases", []) if p not in words]


def slider_key(version, word: str) -> str:
    return f"weight_{version.id}_{word}"


def slider_weights(version, words: list[str]) -> dict[str, float]:
    """The weights the sliders hold now (a slider not yet shown holds the version's own weight)."""
    weights = {}
    for word in words:
        value = float(st.session_state.get(slider_key(version, word), (version.weights or {}).get(word, 1.0)))
        if abs(value - 1.0) > 1e-6:
            weights[word] = round(value, 2)
    return weights


def log_slider(word: str, key: str) -> None:
    value = float(st.session_state[key])
    shown = st.session_state.setdefault("slider_shown", {})
    if shown.get(key) != value:  # the browser can resend an unchanged value when sliders remount
        shown[key] = value
        page.event("slider_change", word=word, value=value)


def log_method() -> None:
    page.event("method_change", method=st.session_state.get("w_method"))


def add_phrase() -> None:
    phrase = " ".join(st.session_state.get("refine_phrase", "").split()).lower()
    if phrase:
        phrases = st.session_state.setdefault("refine_phrases", [])
        if phrase not in phrases:
            phrases.append(phrase)
            page.event("phrase_add", phrase=phrase)
    st.session_state.refine_phrase = ""


def new_canvas() -> None:
    st.session_state.canvas_nonce = st.session_state.get("canvas_nonce", 0) + 1


def clear_mask() -> None:
    st.session_state.pop("mask_prefill", None)
    new_canvas()
    page.event("mask_clear")


def mask_from_word(version, maps, word_tokens) -> None:
    word = st.session_state.get("mask_word")
    with user_errors("Mask from word"):
        mask = maps.mask_from_word(word_tokens, word, size=(version.height, version.width))
        st.session_state.mask_prefill = {"version": version.id, "mask": mask, "word": word}
        new_canvas()
        page.event("mask_from_word", word=word, coverage=float(mask.mean()))


# ---------------------------------------------------------------- actions (run before the page is drawn)
def apply(studio, version, word_tokens) -> None:
    weights = slider_weights(version, slider_words(word_tokens))
    method = st.session_state.get("w_method", "score")
    layout = st.session_state.get("w_layout", DEFAULT_LAYOUT)
    if weights == {k: round(float(v), 2) for k, v in (version.weights or {}).items() if abs(v - 1.0) > 1e-6} and \
            (method == version.weight_mode or not weights):
        st.info("Nothing changed from the current version: move a slider first.")
        return
    page.event("apply", weights=weights, method=method, layout=layout)
    store = app.notes()

    def done(new) -> None:
        marks = ", ".join(history.focus_marks(new)) or "all words at 1"
        store["refine"] = (new.id, "success", f"v{new.number} made from v{version.number} with seed {new.seed}: {marks}")

    with user_errors("Apply"):
        new = run_with_progress(page.engine, lambda p: studio.reweight(weights, method, progress=p, layout=layout), "Applying", done)
        st.success(store["refine"][2])


def inpaint(studio, version) -> None:
    drawn = st.session_state.get("mask_drawn")
    mask = drawn["mask"] if drawn and drawn["version"] == version.id else None
    prompt = st.session_state.get("w_inpaint_prompt", "")
    blur = int(st.session_state.get("w_mask_blur", 4))
    only_masked = bool(st.session_state.get("w_only_masked", False))
    padding = int(st.session_state.get("w_padding", 16))
    with user_errors("Inpaint"):
        if mask is None or not mask.any():
            raise AttuneError("The mask is empty: paint over the region to change, or use “Mask from word”.")
        page.event("inpaint", prompt=prompt, strokes=drawn["strokes"], coverage=float(mask.mean()),
                   mask_blur=blur, only_masked=only_masked, padding=padding)
        store = app.notes()

        def done(new) -> None:
            store["refine"] = (new.id, "success", f"v{new.number} inpainted from v{version.number}.")

        run_with_progress(
            page.engine,
            lambda p: studio.inpaint(mask, prompt, mask_blur=blur, only_masked=only_masked, padding=padding, progress=p),
            "Inpainting", done,
        )
        st.session_state.pop("mask_prefill", None)
        st.success(store["refine"][2])


# ---------------------------------------------------------------- sections
def sliders_section(version, word_tokens) -> None:
    st.subheader("Attention sliders")
    st.caption(f"One slider per word, 0–2: {MARKS}. Apply makes a new version with the same seed "
               f"(v{version.number}'s seed {version.seed}).")
    with st.expander("Add a phrase slider (consecutive words, e.g. “full moon”)"):
        st.text_input("Phrase", key="refine_phrase", on_change=add_phrase)
    words = slider_words(word_tokens)
    shown = st.session_state.setdefault("slider_shown", {})
    columns = st.columns(3)
    for i, word in enumerate(words):
        key = slider_key(version, word)
        value = columns[i % 3].slider(word, 0.0, 2.0, float((version.weights or {}).get(word, 1.0)), 0.1, key=key,
                                      help=MARKS, on_change=log_slider, args=(word, key))
        shown.setdefault(key, float(value))
    layout = st.session_state.get("w_layout", DEFAULT_LAYOUT)
    method = st.radio("Method", list(METHODS), key=remembered("method", version.weight_mode or "score"), horizontal=True,
                      captions=[refine_notes.method_caption(m, layout) for m in METHODS], on_change=log_method)
    remember("method", method)
    layout = st.selectbox("Layout", list(LAYOUT_MODES), key=remembered("layout", DEFAULT_LAYOUT),
                          help="blend: change only where the word attends; free: re-run the whole picture")
    remember("layout", layout)
    st.caption(refine_notes.layout_caption(layout, method))
    st.caption("To apply: " + (", ".join(history.weight_marks(slider_weights(version, words))) or "all words at 1")
               + f" · method {method} · layout {layout}")
    st.button("Apply", type="primary", icon=":material/tune:", key="refine_apply")


def inpaint_section(version, maps, word_tokens) -> None:
    st.subheader("Mask and inpaint")
    image = Image.open(version.image_path)
    prefill = st.session_state.get("mask_prefill")
    prefill_mask = prefill["mask"] if prefill and prefill["version"] == version.id else None

    tools, drawing_col = st.columns([1, 2])
    with tools:
        mode = st.segmented_control("Tool", ["brush", "eraser"], default="brush", key="mask_tool",
                                    format_func=str.capitalize) or "brush"
        st.caption("Eraser strokes remove from the mask" if mode == "eraser" else "Brush strokes add to the mask")
        brush = st.slider("Brush size", 2, 60, key=remembered("brush", 24))
        remember("brush", brush)
        st.button("Clear mask", icon=":material/delete:", on_click=clear_mask)
        if page.enabled("heatmaps") and maps is not None:
            words = list(dict.fromkeys(w for w in word_tokens.words if any(c.isalnum() for c in w)))
            if st.session_state.get("mask_word") not in words:
                st.session_state.mask_word = "sky" if "sky" in words else words[0]
            st.selectbox("Word", words, key="mask_word")
            st.button("Mask from word", icon=":material/auto_fix_high:", on_click=mask_from_word,
                      args=(version, maps, word_tokens))
    with drawing_col:
        key = f"canvas_{version.id}_{st.session_state.get('canvas_nonce', 0)}"
        drawing = canvas.mask_canvas(image, key=key, brush_size=brush, mode=mode, prefill=prefill_mask)
        if drawing is None and prefill_mask is not None:
            drawing = canvas.MaskDrawing(mask=prefill_mask, strokes=0)
        if drawing is not None:
            st.session_state.mask_drawn = {"version": version.id, "mask": drawing.mask, "strokes": drawing.strokes}
            seen = st.session_state.setdefault("mask_strokes_seen", {})
            if drawing.strokes != seen.get(key, 0):
                seen[key] = drawing.strokes
                page.event("mask_strokes", strokes=drawing.strokes)
            st.caption(f"Mask covers {drawing.mask.mean():.0%} of the image · {drawing.strokes} strokes"
                       + (f" · pre-filled from “{prefill['word']}”" if prefill_mask is not None else ""))
        else:
            st.session_state.pop("mask_drawn", None)

    prompt = st.text_input("Inpaint prompt", key=remembered("inpaint_prompt", ""), placeholder="misty forest")
    remember("inpaint_prompt", prompt)
    blur_col, only_col, pad_col = st.columns(3)
    blur = blur_col.slider("Mask blur", 0, 32, key=remembered("mask_blur", 4))
    only_masked = only_col.checkbox("Only masked", key=remembered("only_masked", False),
                                    help="Crop the mask's box plus padding, work at full resolution, paste back")
    padding = pad_col.slider("Padding", 0, 64, key=remembered("padding", 16), disabled=not only_masked)
    for name, value in (("mask_blur", blur), ("only_masked", only_masked), ("padding", padding)):
        remember(name, value)
    st.caption(f"Inpaint “{prompt or version.prompt}” inside the mask" + ("" if prompt else " (empty: the image's own prompt)"))
    st.button("Inpaint", type="primary", icon=":material/brush:", key="refine_inpaint")


studio = page.studio
version = studio.current if studio is not None else None
if studio is None:
    pass
elif version is None:
    st.info("No image yet. Generate one first (or use “Try the example” on Home).")
else:
    with user_errors("Reading the prompt's words"):
        if st.session_state.get("refine_apply") and page.enabled("sliders"):
            apply(studio, version, studio.word_tokens(version))
        elif st.session_state.get("refine_inpaint") and page.enabled("inpainting"):
            inpaint(studio, version)
        version = studio.current
        image_col, info_col = st.columns([1, 2])
        image_col.image(str(version.image_path), width=256, caption=f"v{version.number} (current)")
        with info_col:
            st.markdown(f"**Prompt:** {version.prompt}  \n**Seed:** {version.seed}")
            focus_badges(version)
        word_tokens = studio.word_tokens(version)
        try:
            maps = studio.maps(version)
        except AttuneError as error:  # e.g. a version imported from a PNG: sliders still work
            maps = None
            st.caption(f"No heatmaps for this version ({error}); “Mask from word” is off.")
        if page.enabled("sliders"):
            sliders_section(version, word_tokens)
        if page.enabled("inpainting"):
            inpaint_section(version, maps, word_tokens)
        if not page.enabled("sliders") and not page.enabled("inpainting"):
            st.info("Refinement tools are turned off in this study condition.")

app.finish(page)
