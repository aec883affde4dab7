"""Refine: per-word attention sliders (same seed), and mask + inpaint with a drawing canvas."""
import numpy as np
import streamlit as st
from PIL import Image

from ui import canvas, history, page as app
from ui.cards import focus_badges
from ui.errors import user_errors
from ui.jobs import run_with_progress
from ui.state import remember, remembered

page = app.setup("refine", "Refine")
METHODS = {
    "score": "scales the word's attention scores before softmax (PromptCharm); strong, keeps layout",
    "prob": "scales the word's attention after softmax (Prompt-to-Prompt); gentle, local",
    "embed": "scales the word's text embedding (A1111 (word:1.3), Compel word+); changes the whole image more",
}
MARKS = "0.5 much less · 0.8 less · 1 unchanged · 1.5 more · 2 much more"


def log_slider(word: str, key: str) -> None:
    page.event("slider_change", word=word, value=float(st.session_state[key]))


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


def clear_mask() -> None:
    st.session_state.pop("mask_prefill", None)
    st.session_state.canvas_nonce = st.session_state.get("canvas_nonce", 0) + 1
    page.event("mask_clear")


def sliders_section(studio, version, word_tokens) -> None:
    st.subheader("Attention sliders")
    st.caption(f"One slider per word, 0–2: {MARKS}. Apply makes a new version with the same seed (v{version.number}'s seed {version.seed}).")
    words = list(dict.fromkeys(w.lower() for w in word_tokens.words if any(c.isalnum() for c in w)))
    phrases = [p for p in st.session_state.get("refine_phrases", []) if p not in words]
    with st.expander("Add a phrase slider (consecutive words, e.g. “full moon”)"):
        st.text_input("Phrase", key="refine_phrase", on_change=add_phrase)
    weights = {}
    columns = st.columns(3)
    for i, word in enumerate(words + phrases):
        key = f"weight_{version.id}_{word}"
        value = columns[i % 3].slider(
            word, 0.0, 2.0, float((version.weights or {}).get(word, 1.0)), 0.1, key=key, help=MARKS,
            on_change=log_slider, args=(word, key),
        )
        if abs(value - 1.0) > 1e-6:
            weights[word] = round(float(value), 2)
    method = st.radio("Method", list(METHODS), key=remembered("method", version.weight_mode or "score"), horizontal=True,
                      captions=list(METHODS.values()), on_change=log_method)
    remember("method", method)
    unchanged = weights == {k: round(float(v), 2) for k, v in (version.weights or {}).items() if abs(v - 1.0) > 1e-6} and \
        (method == version.weight_mode or not weights)
    if st.button("Apply", type="primary", icon=":material/tune:", key="refine_apply"):
        if unchanged:
            st.info("Nothing changed from the current version: move a slider first.")
        else:
            page.event("apply", weights=weights, method=method)
            with user_errors("Apply"):
                new = run_with_progress(page.engine, lambda p: studio.reweight(weights, method, progress=p), "Applying")
                app.flash(f"v{new.number} made from v{version.number} with seed {new.seed}: "
                          + (", ".join(history.focus_marks(new)) or "all words at 1"))
                st.rerun()


def inpaint_section(studio, version, maps, word_tokens) -> None:
    st.subheader("Mask and inpaint")
    image = Image.open(version.image_path)
    prefill = st.session_state.get("mask_prefill")
    prefill_mask = prefill["mask"] if prefill and prefill["version"] == version.id else None

    tools, drawing_col = st.columns([1, 2])
    with tools:
        mode = st.segmented_control("Tool", ["brush", "eraser"], default="brush", key="mask_tool",
                                    format_func=str.capitalize) or "brush"
        brush = st.slider("Brush size", 2, 60, key=remembered("brush", 24))
        remember("brush", brush)
        st.button("Clear mask", icon=":material/delete:", on_click=clear_mask)
        if page.enabled("heatmaps"):
            words = list(dict.fromkeys(w for w in word_tokens.words if any(c.isalnum() for c in w)))
            word = st.selectbox("Word", words, index=words.index("sky") if "sky" in words else 0, key="mask_word")
            if st.button("Mask from word", icon=":material/auto_fix_high:"):
                with user_errors("Mask from word"):
                    from engine.heatmap import mask_from_word

                    mask = mask_from_word(maps.word_heatmap(word_tokens, word))
                    mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size, Image.NEAREST)) > 0
                    st.session_state.mask_prefill = {"version": version.id, "mask": mask, "word": word}
                    st.session_state.canvas_nonce = st.session_state.get("canvas_nonce", 0) + 1
                    page.event("mask_from_word", word=word, coverage=float(mask.mean()))
                    st.rerun()
    with drawing_col:
        key = f"canvas_{version.id}_{st.session_state.get('canvas_nonce', 0)}"
        drawing = canvas.mask_canvas(image, key=key, brush_size=brush, mode=mode, prefill=prefill_mask)
        if drawing is not None:
            if drawing.strokes != st.session_state.get("mask_strokes_seen", {}).get(key, 0):
                st.session_state.setdefault("mask_strokes_seen", {})[key] = drawing.strokes
                page.event("mask_strokes", strokes=drawing.strokes)
            st.caption(f"Mask covers {drawing.mask.mean():.0%} of the image · {drawing.strokes} strokes"
                       + (f" · pre-filled from “{prefill['word']}”" if prefill_mask is not None else ""))

    prompt = st.text_input("Inpaint prompt", key=remembered("inpaint_prompt", ""), placeholder="misty forest")
    remember("inpaint_prompt", prompt)
    blur_col, only_col, pad_col = st.columns(3)
    blur = blur_col.slider("Mask blur", 0, 32, key=remembered("mask_blur", 4))
    only_masked = only_col.checkbox("Only masked", key=remembered("only_masked", False),
                                    help="Crop the mask's box plus padding, work at full resolution, paste back")
    padding = pad_col.slider("Padding", 0, 64, key=remembered("padding", 16), disabled=not only_masked)
    for name, value in (("mask_blur", blur), ("only_masked", only_masked), ("padding", padding)):
        remember(name, value)
    if st.button("Inpaint", type="primary", icon=":material/brush:", key="refine_inpaint"):
        mask = drawing.mask if drawing is not None else prefill_mask
        with user_errors("Inpaint"):
            if mask is None or not np.asarray(mask).any():
                from engine.errors import AttuneError

                raise AttuneError("The mask is empty: paint over the region to change, or use “Mask from word”.")
            page.event("inpaint", prompt=prompt, strokes=drawing.strokes if drawing else 0, coverage=float(np.mean(mask)),
                       mask_blur=blur, only_masked=only_masked, padding=padding)
            new = run_with_progress(
                page.engine,
                lambda p: studio.inpaint(mask, prompt, mask_blur=blur, only_masked=only_masked, padding=padding, progress=p),
                "Inpainting",
            )
            st.session_state.pop("mask_prefill", None)
            app.flash(f"v{new.number} inpainted from v{version.number}.")
            st.rerun()


studio = page.studio
version = studio.current if studio is not None else None
if studio is None:
    pass
elif version is None:
    st.info("No image yet. Generate one first (or use “Try the example” on Home).")
else:
    image_col, info_col = st.columns([1, 2])
    image_col.image(str(version.image_path), width=256, caption=f"v{version.number} (current)")
    with info_col:
        st.markdown(f"**Prompt:** {version.prompt}  \n**Seed:** {version.seed}")
        focus_badges(version)
    with user_errors("Reading the prompt's words"):
        word_tokens = studio.word_tokens(version)
        maps = studio.maps(version)
        if page.enabled("sliders"):
            sliders_section(studio, version, word_tokens)
        if page.enabled("inpainting"):
            inpaint_section(studio, version, maps, word_tokens)
        if not page.enabled("sliders") and not page.enabled("inpainting"):
            st.info("Refinement tools are turned off in this study condition.")

app.finish(page)
