"""Deployment settings read from environment variables (and st.secrets where a secret belongs there)."""
from __future__ import annotations

import functools
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

EXAMPLE_PROMPT = "a painting of a wolf sitting in front of the full moon, night sky"
EXAMPLE_SEED = 7


def model_setting() -> str | None:
    """ATTUNE_MODEL: a diffusers folder or hub id; unset means the engine's built-in model."""
    return os.environ.get("ATTUNE_MODEL") or None


def backend_setting() -> str:
    return os.environ.get("ATTUNE_BACKEND", "auto")


def model_defaults(engine=None):
    """The engine's model defaults (size, guidance, steps, scheduler and their sources); the built-in model's
    before an engine is loaded."""
    from engine import BUILTIN_DEFAULTS

    return engine.model_defaults if engine is not None else BUILTIN_DEFAULTS


def default_steps(engine=None) -> int | None:
    """The model's default steps; ATTUNE_DEFAULT_STEPS lets tests and demos run with few denoising steps. Without an
    engine and the variable, None: the engine fills in its model's default."""
    fallback = model_defaults(engine).steps if engine is not None else None
    try:
        return max(1, int(os.environ["ATTUNE_DEFAULT_STEPS"]))
    except (KeyError, ValueError):
        return fallback


def progress_after(default: float) -> float:
    """Seconds a job runs before its progress bar appears: $ATTUNE_PROGRESS_AFTER (0: at once), else `default`."""
    try:
        return max(0.0, float(os.environ["ATTUNE_PROGRESS_AFTER"]))
    except (KeyError, ValueError):
        return default


def data_dir() -> Path:
    """Where images, masks, maps and the SQLite log live. Ephemeral on Community Cloud.

    AttuneError (naming the folder) when it cannot be made or written, so the app can say so and stop."""
    folder = Path(os.environ.get("ATTUNE_DATA_DIR") or REPO_ROOT / ".data" / "app")
    _check_writable(str(folder))
    return folder


@functools.lru_cache(maxsize=8)
def _check_writable(folder: str) -> None:
    import tempfile

    from engine import AttuneError

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise AttuneError(f"The data folder {folder} cannot be written ({error.strerror or type(error).__name__}): "
                          "set ATTUNE_DATA_DIR to a folder the app can write.") from None


def log_path() -> Path:
    return data_dir() / "attune_log.sqlite"


def conditions_path() -> Path:
    """ATTUNE_CONDITIONS, else study/conditions.toml if a researcher made one, else the documented example."""
    if os.environ.get("ATTUNE_CONDITIONS"):
        return Path(os.environ["ATTUNE_CONDITIONS"])
    own = REPO_ROOT / "study" / "conditions.toml"
    return own if own.exists() else REPO_ROOT / "study" / "conditions.example.toml"


def researcher_password() -> str | None:
    """From st.secrets['researcher_password'] or ATTUNE_RESEARCHER_PASSWORD; None disables the researcher view."""
    try:
        import streamlit as st

        value = st.secrets.get("researcher_password")
        if value:
            return str(value)
    except Exception:  # no secrets.toml at all is the common case
        pass
    return os.environ.get("ATTUNE_RESEARCHER_PASSWORD") or None
