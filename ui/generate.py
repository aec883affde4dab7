"""The Generate action, shared by Home's example button and the Generate page."""
from __future__ import annotations

import streamlit as st

from ui import jobs, settings
from ui.state import Keys, Note, session

READY = "Version {number} is ready."


def snapshot(session) -> dict:
    """The Generate page's widget values at the click."""
    value = st.session_state.get
    params = dict(
        prompt=value(Keys.PROMPT, settings.EXAMPLE_PROMPT), negative_prompt=value(Keys.NEGATIVE, ""),
        seed=int(value(Keys.SEED, settings.EXAMPLE_SEED)), syntax=value(Keys.SYNTAX, "a1111"),
    )
    # A value without its widget stays unset: the engine takes its model's default (engine.model.family).
    steps = value(Keys.STEPS, settings.default_steps())
    for key, name, kind in ((Keys.WIDTH, "width", int), (Keys.HEIGHT, "height", int), (Keys.GUIDANCE, "guidance", float),
                            (Keys.SCHEDULER, "scheduler", str)):
        if value(key) is not None:
            params[name] = kind(value(key))
    if steps is not None:
        params["steps"] = int(steps)
    return {"params": params, "event": "generate_click",
            "payload": {"seed": params["seed"], "steps": params.get("steps"), "syntax": params["syntax"]}}


SIZES = (64, 96, 128, 192, 256, 384, 512, 640, 768)
SIZE_STEP = 64


def size_choices(defaults) -> list[int]:
    """The Width and Height choices: the common sizes, the model's own, and every multiple of 64 from half to 1.5x
    the model's longer side (SDXL's 1024 px brings its aspect buckets: 832, 896, 1152, 1216...)."""
    native = max(defaults.width, defaults.height)
    around = range(max(SIZE_STEP, native // 2 // SIZE_STEP * SIZE_STEP), native * 3 // 2 + 1, SIZE_STEP)
    return sorted(set(SIZES) | {defaults.width, defaults.height} | set(around))


MODEL_KEYS = (Keys.STEPS, Keys.GUIDANCE, Keys.WIDTH, Keys.HEIGHT, Keys.SCHEDULER)  # widgets that start at its defaults


def follow_model_defaults(defaults) -> None:
    """When the model changes (the sidebar), its size, steps, guidance and scheduler widgets start again at the new
    model's defaults: an SDXL folder must not run at the previous model's 128 px. Call before those widgets."""
    shown = (defaults.family, defaults.width, defaults.height, defaults.guidance, defaults.steps, defaults.scheduler)
    state = session()
    before, state.generate_defaults = state.generate_defaults, shown
    if before is not None and before != shown:
        for key in MODEL_KEYS:
            st.session_state.pop(key, None)


def example(message: str) -> dict:
    """Home's 'Try the example' request."""
    params = dict(prompt=settings.EXAMPLE_PROMPT, seed=settings.EXAMPLE_SEED)
    if settings.default_steps() is not None:
        params["steps"] = settings.default_steps()
    return {"params": params, "event": "try_example", "payload": {}, "message": message}


def run(page, request) -> jobs.Job:
    """Start one text-to-image through the Studio; its note says which version is ready."""
    from engine import GenerateParams

    values = request.values
    params = GenerateParams(**values["params"])
    message = values.get("message", READY)
    current = page.current

    def describe(version) -> Note:
        return Note(version.id, "success", message.format(number=version.number))

    job = jobs.Job(page.session, request.page, "Generating", lambda progress: page.studio.generate(params, progress=progress),
                   describe, what="Generate", failed_version=current.id if current else None).start()
    # The click's event row after the start: its SQLite commit (an fsync, 20-80 ms on a busy disk) overlaps the
    # engine instead of delaying it; the row is written all the same, long before the version's row.
    page.event(values["event"], **values["payload"])
    return job
