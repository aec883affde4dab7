"""Generate: prompt (with emphasis syntax), negative prompt, seed, steps, guidance, size, scheduler."""
import random

import streamlit as st

from ui import page as app, settings
from ui.cards import version_card
from ui.errors import user_errors
from ui.generate import generate
from ui.prompt_assist import rating, suggest_panel, word_cards
from ui.state import remember, remembered

page = app.setup("generate", "Generate")
SYNTAX_LABELS = {"a1111": "A1111  (word:1.3)", "compel": "Compel  word+", "none": "Plain text"}
SCHEDULERS = ("ddim", "euler", "dpm++")
SIZES = (64, 96, 128, 192, 256, 384, 512, 640, 768)


def native_size(engine) -> int:
    components = engine.components
    return int(components.unet.config.sample_size) * int(components.vae_scale_factor)


def randomise_seed() -> None:
    st.session_state["w_seed"] = random.randint(0, 2**31 - 1)
    page.event("random_seed")


if page.studio is not None:
    prompt = st.text_area("Prompt", key=remembered("prompt", settings.EXAMPLE_PROMPT), height=80)
    remember("prompt", prompt)
    suggest_panel(page)
    if page.enabled("prompt_syntax"):
        syntax = st.radio("Emphasis syntax", list(SYNTAX_LABELS), format_func=SYNTAX_LABELS.get, horizontal=True,
                          key=remembered("syntax", "a1111"))
        remember("syntax", syntax)
        with st.expander("Syntax help"):
            st.markdown(
                "- **A1111**: `(moon)` ×1.1, `((moon))` ×1.21, `(moon:1.5)` sets ×1.5, `[moon]` ÷1.1, `\\(` for a literal bracket.\n"
                "- **Compel**: `moon+` ×1.1, `moon++` ×1.21, `moon-` ×0.9, `(full moon)1.5` sets ×1.5 for a group.\n"
                "- Malformed emphasis is kept as plain text, never an error."
            )
    else:
        syntax = "none"
    negative = st.text_input("Negative prompt", key=remembered("negative", ""))
    remember("negative", negative)

    seed_col, dice_col, steps_col, guidance_col = st.columns([3, 1.5, 3, 3], vertical_alignment="bottom")
    seed = seed_col.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=remembered("seed", settings.EXAMPLE_SEED))
    dice_col.button("Random", icon=":material/casino:", on_click=randomise_seed, help="Pick a random seed")
    steps = steps_col.number_input("Steps", min_value=1, max_value=150, key=remembered("steps", settings.default_steps()))
    guidance = guidance_col.number_input("Guidance", min_value=0.0, max_value=30.0, step=0.5, key=remembered("guidance", 7.5))
    for key, value in (("seed", seed), ("steps", steps), ("guidance", guidance)):
        remember(key, value)

    default_side = native_size(page.engine)
    width_col, height_col, scheduler_col = st.columns(3)
    sizes = sorted(set(SIZES) | {default_side})
    width = width_col.selectbox("Width", sizes, key=remembered("width", default_side))
    height = height_col.selectbox("Height", sizes, key=remembered("height", default_side))
    scheduler = scheduler_col.selectbox("Scheduler", SCHEDULERS, key=remembered("scheduler", "ddim"))
    for key, value in (("width", width), ("height", height), ("scheduler", scheduler)):
        remember(key, value)

    if syntax != "none" and any(prompt.count(a) != prompt.count(b) for a, b in ("()", "[]")):
        st.info("An unmatched bracket in the prompt is kept as plain text (emphasis syntax never fails).")
    # Flag words the model does not know before the user spends a generation on them.
    with user_errors("Reading the prompt"):
        words = page.engine.tokenize(prompt, syntax)
        if words.unknown_words:
            st.warning("Unknown to this model (they will have little effect): " + ", ".join(f"`{w}`" for w in words.unknown_words))
        if words.truncated_words:
            st.warning("Beyond the 75-token limit and dropped: " + ", ".join(words.truncated_words))

    if st.button("Generate", type="primary", icon=":material/auto_awesome:"):
        from engine.pipeline import GenerateParams

        params = GenerateParams(
            prompt=prompt, negative_prompt=negative, seed=int(seed), steps=int(steps), guidance=float(guidance),
            width=int(width), height=int(height), scheduler=scheduler, syntax=syntax,
        )
        page.event("generate_click", seed=int(seed), steps=int(steps), syntax=syntax)
        generate(page, params)

    if page.studio.current is not None:
        st.divider()
        version_card(page.studio.current, page.studio)
        rating(page)
        word_cards(page)

app.finish(page)
