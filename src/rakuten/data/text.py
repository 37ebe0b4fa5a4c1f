"""Text cleaning for titles and HTML descriptions."""
from __future__ import annotations

import html
import re

_TAG = re.compile(r"<[^>]*>")
_WS = re.compile(r"\s+")


def clean_text(value) -> str:
    """HTML entities unescaped, tags stripped, whitespace collapsed; NaN/None -> ''.

    Unescaping runs twice because the challenge's descriptions are often double-escaped
    (``&amp;eacute;``); tags become spaces so ``a<br>b`` does not glue words together.
    """
    if value is None or (isinstance(value, float) and value != value):
        return ""
    s = str(value)
    for _ in range(2):
        s = html.unescape(s)
    s = _TAG.sub(" ", s)
    # Entities that decoded to tags (``&lt;p&gt;``) are stripped by the second pass.
    s = _TAG.sub(" ", html.unescape(s))
    s = s.replace("\u00a0", " ")
    return _WS.sub(" ", s).strip()


def join_text(title: str, description: str) -> str:
    """The ``text`` field: title, then description when present."""
    return f"{title} . {description}" if description else title
