"""Generate: prompt (with emphasis syntax), negative prompt, seed, steps, guidance, size, scheduler.

The widgets keep their values across pages (persist_state="session"); Generate is a request (ui/actions.py)."""
import random

import streamlit as st

from engine import MAX_PROMPT_CHUNKS, SCHEDULERS
from ui import settings
from ui.cards import defaults_line
from ui.actions import submit
from ui.cards import version_card
from ui.generate import follow_model_defaults, size_choices
from ui.errors import user_errors
from ui.page import app_page
from ui.prompt_assist import rating, suggest_panel, word_cards
from ui.state import Keys

SYNTAX_LABELS = {"a1111": "A1111  (word:1.3)", "compel": "Compel  word+", "none": "Plain text"}
KEEP = {"persist_state": "session"}


def randomise_seed(page) -> None:
    st.session_state[Keys.SEED] = random.randint(0, 2**31 - 1)
    page.event("random_seed")


with app_page("generate", "Generate") as page:
    if page.studio is None:
        st.stop()
    prompt = st.text_area("Prompt", settings.EXAMPLE_PROMPT, key=Keys.PROMPT, height=80, **KEEP)
    suggest_panel(page)
    if page.enabled("prompt_syntax"):
        syntax = st.radio("Emphasis syntax", list(SYNTAX_LABELS), format_func=SYNTAX_LABELS.get, horizontal=True,
                          key=Keys.SYNTAX, **KEEP)
        with st.expander("Syntax help"):
            st.markdown(
                "- **A1111**: `(moon)` ×1.1, `((moon))` ×1.21, `(moon:1.5)` sets ×1.5, `[moon]` ÷1.1, `\\(` for a literal bracket; "
                "read exactly as A1111 reads it (a bracket never closed weighs the rest of the prompt).\n"
                "- **Compel**: `moon+` ×1.1, `moon++` ×1.21, `moon-` ×0.9, `(full moon)1.5` sets ×1.5 for a group; read as Compel reads it.\n"
                "- Method `a1111` on the Refine page weighs A1111 emphasis with A1111's own formula, `embed` with Compel's.\n"
                "- Emphasis syntax is never an error."
            )
    else:
        syntax = st.session_state[Keys.SYNTAX] = "none"
    st.text_input("Negative prompt", key=Keys.NEGATIVE, **KEEP)

    # The widgets start at the model's defaults (engine.model.family): its size, scheduler, guidance and steps.
    defaults = settings.model_defaults(page.engine)
    follow_model_defaults(defaults)
    seed_col, dice_col, steps_col, guidance_col = st.columns([3, 1.5, 3, 3], vertical_alignment="bottom")
    seed_col.number_input("Seed", 0, 2**31 - 1, settings.EXAMPLE_SEED, step=1, key=Keys.SEED, **KEEP)
    dice_col.button("Random", icon=":material/casino:", on_click=randomise_seed, args=(page,), help="Pick a random seed")
    steps_col.number_input("Steps", 1, 150, settings.default_steps(page.engine), key=Keys.STEPS, **KEEP)
    guidance_col.number_input(
        "Guidance", 0.0, 30.0, float(defaults.guidance), step=0.5, key=Keys.GUIDANCE,
        help=f"This model's default is {defaults.guidance:g} ({defaults.sources.get('guidance', 'family default')}): "
             "4 was measured for the built-in model (docs/results.md, Guidance), Stable Diffusion wants about 7.5, "
             "few-step Turbo/LCM models run with guidance off (0).", **KEEP)

    sizes = size_choices(defaults)
    width_col, height_col, scheduler_col = st.columns(3)
    width_col.selectbox("Width", sizes, sizes.index(defaults.width), key=Keys.WIDTH, **KEEP)
    height_col.selectbox("Height", sizes, sizes.index(defaults.height), key=Keys.HEIGHT, **KEEP)
    scheduler_col.selectbox("Scheduler", SCHEDULERS, SCHEDULERS.index(defaults.scheduler), key=Keys.SCHEDULER,
                            **KEEP)
    st.caption(defaults_line(defaults))

    # Flag words the model does not know before the user spends a generation on them.
    with user_errors("Reading the prompt"):
        words = page.engine.tokenize(prompt, syntax)
        for note in words.notes:  # e.g. an unclosed bracket, BREAK: how the syntax was read (never an error)
            st.info(note)
        if words.unknown_words:
            st.warning("Unknown to this model (they will have little effect): " + ", ".join(f"`{w}`" for w in words.unknown_words))
        if words.truncated_words:
            st.warning(f"Past the last of {MAX_PROMPT_CHUNKS} 75-token chunks, left out: " + ", ".join(words.truncated_words))

    st.button("Generate", type="primary", icon=":material/auto_awesome:", on_click=submit, args=(page, "generate"))
    if page.current is not None:
        st.divider()
        version_card(page.current, page.studio)
        rating(page)
        word_cards(page)
