"""The one exception type that carries a message meant for the user."""


class AttuneError(ValueError):
    """Bad input or an unusable model. The message is one line, shown as is (CLI stderr, st.error)."""
