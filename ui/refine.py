"""Refine's actions: the Apply and Inpaint requests, and the small callbacks of its widgets (phrases, slider and
method logging, mask from word, clear mask). The page only draws widgets and calls these."""
from __future__ import annotations

import streamlit as st

from engine import DEFAULT_LAYOUT, INPAINT_DEFAULTS, AttuneError, normalize_weights, slider_terms
from ui import history, jobs, state
from ui.state import Keys, Note

PAGE = "refine"
NO_CHANGE = "Nothing changed from the current version: move a slider first."
EMPTY_MASK = "The mask is empty: paint over the region to change, or use “Mask from word”."


# ---------------------------------------------------------------- sliders
def slider_words(page, version, word_tokens) -> list[str]:
    """The engine's slider rule (engine.words.sliders) with the model's known phrases; then the words the version
    weights and the phrases the user added."""
    phrases = page.engine.model_defaults.phrases if page.engine is not None else ()
    return slider_terms(word_tokens, phrases, show_all=bool(st.session_state.get(Keys.ALL_WORDS)),
                        weighted=[*(version.weights or {}), *state.session().phrases])


def sync_sliders(version, words: list[str]) -> None:
    """Set the sliders from a version's weights when it becomes current (restore, a new version); keys stay the
    same across versions, so the sliders never remount."""
    session = state.session()
    weights = version.weights or {}
    for word in words:
        key = Keys.weight(word)
        if session.sliders_version != version.id or key not in st.session_state:
            st.session_state[key] = float(weights.get(word, 1.0))
    if session.sliders_version != version.id:
        session.sliders_version = version.id
        session.sliders_logged.clear()


def slider_weights(words: list[str]) -> dict[str, float]:
    """The weights the sliders hold now."""
    return normalize_weights({word: st.session_state.get(Keys.weight(word), 1.0) for word in words})


def log_slider(page, word: str) -> None:
    value = float(st.session_state[Keys.weight(word)])
    logged = page.session.sliders_logged
    if logged.get(word) != value:  # a browser can resend an unchanged value
        logged[word] = value
        page.event("slider_change", word=word, value=value)


def log_method(page) -> None:
    page.event("method_change", method=st.session_state.get(Keys.METHOD))


def add_phrase(page) -> None:
    phrase = " ".join(st.session_state.get(Keys.PHRASE, "").split()).lower()
    phrases = page.session.phrases
    if phrase and phrase not in phrases:
        phrases.append(phrase)
        page.event("phrase_add", phrase=phrase)
    st.session_state[Keys.PHRASE] = ""


# ---------------------------------------------------------------- mask
def canvas_key(version) -> str:
    return f"canvas_{version.id}_{state.session().canvas_nonce}"


def clear_mask(page) -> None:
    page.session.mask_prefill = None
    page.session.canvas_nonce += 1
    page.event("mask_clear")


def mask_from_word(page, version, maps, word_tokens, word: str) -> None:
    try:
        mask = maps.mask_from_word(word_tokens, word, size=(version.height, version.width))
    except AttuneError as error:
        page.session.notes[PAGE] = Note(version.id, "error", str(error))
        return
    page.session.mask_prefill = {"version": version.id, "mask": mask, "word": word}
    page.session.canvas_nonce += 1
    page.event("mask_from_word", word=word, coverage=float(mask.mean()))


def prefill_for(version):
    prefill = state.session().mask_prefill
    return prefill if prefill and prefill["version"] == version.id else None


def keep_drawing(page, version, drawing, key: str) -> None:
    """Remember the canvas's mask for Inpaint, and log each new stroke count once."""
    session = state.session()
    if drawing is None:
        session.mask_drawn = None
        return
    session.mask_drawn = {"version": version.id, "mask": drawing.mask, "strokes": drawing.strokes}
    if drawing.strokes != session.strokes_seen.get(key, 0):
        session.strokes_seen[key] = drawing.strokes
        page.event("mask_strokes", strokes=drawing.strokes)


# ---------------------------------------------------------------- requests (see ui/actions.py)
def apply_snapshot(session) -> dict:
    version_id = session.sliders_version or (session.studio.current.id if session.studio.current else None)
    words = [key[len("weight_"):] for key in list(st.session_state) if isinstance(key, str) and key.startswith("weight_")]
    return {"version_id": version_id, "weights": slider_weights(words),
            "method": st.session_state.get(Keys.METHOD, "score"),
            "layout": st.session_state.get(Keys.LAYOUT, DEFAULT_LAYOUT)}


def apply(page, request):
    """Reweight the sliders' version with the same seed; a Note when nothing changed."""
    studio, values = page.studio, request.values
    version = studio.history.get(values["version_id"]) if values["version_id"] else studio.current
    if version is None:
        return Note(None, "info", "No image yet. Generate one first.")
    weights, method, layout = values["weights"], values["method"], values.get("layout", DEFAULT_LAYOUT)
    if weights == normalize_weights(version.weights) and (method == version.weight_mode or not weights):
        return Note(page.current.id, "info", NO_CHANGE)

    def describe(new) -> Note:
        marks = ", ".join(history.focus_marks(new)) or "all words at 1"
        return Note(new.id, "success", f"v{new.number} made from v{version.number} with seed {new.seed}: {marks}")

    job = jobs.Job(page.session, request.page, "Applying",
                   lambda progress: studio.reweight(weights, method, parent=version, progress=progress, layout=layout),
                   describe,
                   what="Apply", failed_version=page.current.id).start()
    page.event("apply", weights=weights, method=method, layout=layout)  # after the start, as ui/generate.py does
    return job


def inpaint_snapshot(session) -> dict:
    value = st.session_state.get
    drawn = session.mask_drawn
    current = session.studio.current
    return {
        "version_id": current.id if current else None,
        "mask": drawn["mask"] if drawn and current and drawn["version"] == current.id else None,
        "strokes": drawn["strokes"] if drawn else 0,
        "prompt": value(Keys.INPAINT_PROMPT, ""), "mask_blur": int(value(Keys.MASK_BLUR, INPAINT_DEFAULTS.mask_blur)),
        "only_masked": bool(value(Keys.ONLY_MASKED, INPAINT_DEFAULTS.only_masked)),
        "padding": int(value(Keys.PADDING, INPAINT_DEFAULTS.padding)),
        "auto_crop": bool(value(Keys.AUTO_CROP, INPAINT_DEFAULTS.auto_crop)),
    }


def inpaint(page, request):
    """Repaint the masked region of the current version; a Note when the mask is empty."""
    studio, values = page.studio, request.values
    version = studio.history.get(values["version_id"]) if values["version_id"] else None
    if version is None:
        return Note(None, "info", "No image yet. Generate one first.")
    mask = values["mask"]
    if mask is None or not mask.any():
        return Note(page.current.id, "error", EMPTY_MASK)
    options = {k: values[k] for k in ("mask_blur", "only_masked", "padding", "auto_crop")}
    session = page.session

    def describe(new) -> Note:
        session.mask_prefill = None
        return Note(new.id, "success", f"v{new.number} inpainted from v{version.number}.")

    job = jobs.Job(session, request.page, "Inpainting",
                   lambda progress: studio.inpaint(mask, values["prompt"], parent=version, progress=progress, **options),
                   describe, what="Inpaint", failed_version=page.current.id).start()
    page.event("inpaint", prompt=values["prompt"], strokes=values["strokes"], coverage=float(mask.mean()), **options)
    return job
