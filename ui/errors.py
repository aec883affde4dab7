"""Show failures as st.error with a clear message, never a traceback."""
from __future__ import annotations

import logging
from contextlib import contextmanager

import streamlit as st

from engine import AttuneError

logger = logging.getLogger("attune.app")


@contextmanager
def user_errors(what: str):
    """Run a block; an AttuneError shows its own message, anything else a one-line summary (details go to the server log)."""
    try:
        yield
    except AttuneError as error:
        st.error(str(error), icon=":material/error:")
    except Exception as error:  # Streamlit's stop/rerun signals are BaseException, so they pass through
        logger.exception("%s failed", what)
        st.error(f"{what} failed: {type(error).__name__}: {error}", icon=":material/error:")
