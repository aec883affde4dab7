"""The version card: the image with its parameters and its focus marks."""
from __future__ import annotations

import html

import streamlit as st

from ui import history
from ui.images import display_data_url


def parameters(version, parent=None) -> dict[str, str]:
    rows = {
        "prompt": version.prompt,
        "negative prompt": version.negative_prompt or "—",
        "seed": str(version.seed),
        "steps": str(version.steps),
        "guidance": f"{version.guidance:g}",
        "scheduler": version.scheduler,
        "size": f"{version.width}×{version.height}",
        "kind": version.kind + (f" (from {history.label(parent)})" if parent is not None else ""),
    }
    if getattr(version, "defaults_source", ""):
        rows["defaults"] = version.defaults_source
    if version.edit:
        rows["change"] = version.edit
    if version.weights:
        rows["attention method"] = version.weight_mode
        rows["word weights"] = ", ".join(f"{w} ×{x:g}" for w, x in sorted(version.weights.items()))
    if version.kind == "inpaint":
        rows["inpaint prompt"] = version.inpaint_prompt or ""
        rows["mask"] = f"blur {version.mask_blur}" + (f", only masked (padding {version.padding})" if version.only_masked else "")
    rows["backend"] = f"{version.backend} on {version.device}" + (f" (fallback: {version.fallback_reason})" if version.fallback_reason else "")
    total = (version.timings or {}).get("total")
    if total:
        rows["time"] = f"{total:.1f} s"
    return rows


def defaults_line(defaults) -> str:
    """'Defaults from model folder (width, height, scheduler), family default (...)' under the Generate widgets, with
    the model's notes (e.g. its scheduler is not one Attune runs)."""
    by_source: dict[str, list[str]] = {}
    for name in defaults.values():
        by_source.setdefault(defaults.sources.get(name, "family default"), []).append(name)
    line = f"{defaults.family}: defaults from " + "; ".join(f"{source} ({', '.join(names)})"
                                                           for source, names in by_source.items())
    if defaults.distilled:
        line += ". A few-step distilled model: guidance off"
    return " ".join([line + "."] + list(defaults.notes))


def parameters_table_html(rows: dict[str, str]) -> str:
    """The parameters as one HTML table, escaped and on one line (a prompt's line breaks become <br>), so markdown
    leaves the cells alone.

    Not st.table: its Arrow table makes the browser load and compile ~15 script chunks (Arrow, Quiver, moment...) when
    the first image arrives, which delayed that image by ~0.3 s (bench/click_breakdown.py), and it needs pandas."""
    def cell(text) -> str:
        return html.escape(str(text)).replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")

    cells = "".join(f"<tr><td>{cell(name)}</td><td>{cell(value)}</td></tr>" for name, value in rows.items())
    return f'<table class="attune-parameters"><thead><tr><th>parameter</th><th>value</th></tr></thead><tbody>{cells}</tbody></table>'


def focus_badges(version) -> None:
    marks = history.focus_marks(version)
    if marks:
        st.markdown(" ".join(f":{'green' if m.startswith('more') else 'orange'}-badge[{m}]" for m in marks))


def version_card(version, studio=None, *, image_width: int = 384) -> None:
    parent = history.by_id(studio, version.parent_id)
    left, right = st.columns([1, 1])
    with left:
        # in the page's message itself: no second request (bench.app: click -> image 0.54 s -> 0.49 s)
        st.image(display_data_url(version.image_path, image_width), width=image_width,
                 caption=f"{history.label(version)} (current)")
    with right:
        focus_badges(version)
        rows = parameters(version, parent)
        st.markdown(parameters_table_html(rows), unsafe_allow_html=True)
