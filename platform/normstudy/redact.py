"""Credentials never printed: ``user:password@`` in URIs becomes ``user:***@``."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URI in it masked.

    Example:
        >>> redact("http://alice:s3cret@head:5000/api")
        'http://alice:***@head:5000/api'
    """
    return _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)
