"""Sidebar on every page: model (built-in or a path), the backend that ran last, and the study session."""
from __future__ import annotations

import streamlit as st

from ui.safe_text import markdown_literal
from ui.state import Keys, session


def _set_model() -> None:
    session().model = st.session_state.get(Keys.SIDEBAR_MODEL, "").strip()


def sidebar(page, model: str | None) -> None:
    with st.sidebar:
        st.subheader("Model")
        st.session_state[Keys.SIDEBAR_MODEL] = model or ""
        st.text_input(
            "Model folder or hub id",
            key=Keys.SIDEBAR_MODEL,
            placeholder="built-in: models/tiny-scenes",
            help="Empty uses the built-in tiny-scenes model. A path to a diffusers folder (safetensors) loads that model.",
            on_change=_set_model,
        )
        engine = page.engine
        if engine is None:
            st.caption("No model loaded.")
        else:
            components = engine.components
            st.caption(f"`{components.model_id}` · weights `{components.weights_hash}`")
            current = page.studio.current if page.studio is not None else None
            if current is not None:
                st.caption(f"Last run: **{current.backend}** on {current.device}")
                if current.fallback_reason:
                    st.caption(f"Fallback: {current.fallback_reason}")
            else:
                st.caption(f"Backend: **{engine.backend_name}**")
        st.subheader("Study session")
        ids = page.ids  # from the URL: shown as text, never as Markdown
        st.caption(
            f"participant {markdown_literal(ids.participant_id)}  \nstudy {markdown_literal(ids.study_id or '—')}  \n"
            f"condition {markdown_literal(ids.condition or page.condition.name or 'all features')}  \n"
            f"session {markdown_literal(ids.session_id[:8])}"
        )
