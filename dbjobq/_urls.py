"""Database URLs as dbjobq shows them: with every password masked.

The one function every `repr()`, error message, log line and CLI output goes
through when it shows a database URL.
"""

from __future__ import annotations

import re

__all__ = ["mask_url"]

_SCHEME = re.compile(r"[A-Za-z][\w+.-]*://")
# Query keys that carry a secret: `password=` (psycopg, libpq), `passwd=` (PyMySQL,
# mysqlclient), `pwd=` (ODBC), `sslpassword=`, tokens and the like.
_SECRET = re.compile(
    r"(?i)(?P<key>(?:^|(?<=[?&;\s]))[^=&;?\s]*(?:pass|pwd|secret|token|credential)"
    r"[^=&;?\s]*=)(?P<value>[^&;#\s]*)"
)
_USER = re.compile(r"[^:/?@]*")
MASK = "***"


def mask_url(url: object) -> str:
    """Return `url` as text with its password and every secret query value masked.

    Takes a URL string or a SQLAlchemy `URL` (anything with `render_as_string`).
    Masks the password of the `user:password@` part (up to the *last* `@` before
    the query, so that a password with an unencoded `@` does not leak its tail) and
    the values of query parameters such as `password=`, `passwd=`, `pwd=` or
    `sslpassword=`. Text that is not a URL has its `password=...`-like pairs masked.
    """
    render = getattr(url, "render_as_string", None)
    text = str(render(hide_password=False)) if callable(render) else str(url)
    scheme = _SCHEME.match(text)
    if scheme is None:
        return _SECRET.sub(rf"\g<key>{MASK}", text)
    head, rest = text[: scheme.end()], text[scheme.end() :]
    authority_end = 0  # where the user[:password]@ part ends, if there is one
    user = _USER.match(rest)
    after = rest[user.end() : user.end() + 1] if user else ""
    if user and after == ":":
        # The password runs to the last "@" before the query: SQLAlchemy stops at the
        # first, and shows the rest as part of the host.
        first_at = rest.find("@", user.end())
        if first_at >= 0:
            query = rest.find("?", first_at)
            last_at = rest.rfind("@", 0, len(rest) if query < 0 else query)
            rest = f"{user.group()}:{MASK}{rest[last_at:]}"
            authority_end = user.end() + 1 + len(MASK)
    elif user and after == "@":
        authority_end = user.end()
    query = rest.find("?", authority_end)
    if query >= 0:
        rest = rest[: query + 1] + _SECRET.sub(rf"\g<key>{MASK}", rest[query + 1 :])
    return head + rest
