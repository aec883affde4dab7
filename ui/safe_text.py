"""Text from outside the app (ids from the URL: ?pid=, ?study=, ?condition=) shown through Streamlit's Markdown."""
from __future__ import annotations

import re
import string

# CommonMark lets any ASCII punctuation be escaped with a backslash, which then shows as itself: links, emphasis,
# code spans, raw HTML, entities and Streamlit's :color[...] directives all start with one of these characters.
_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f]+")  # a newline could start a heading, list or table row


def markdown_literal(text: str) -> str:
    """`text` escaped so that st.markdown / st.caption / st.error show it as it is, on one line, never as markup."""
    return _PUNCTUATION.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(text)))
