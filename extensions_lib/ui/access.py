"""Who may use the Trainer's pages and REST routes: user:password lists and HTTP Basic checking.

The credential format is the WebUI's (--gradio-auth, --api-auth, --gradio-auth-path): entries
`user:password` separated by commas or newlines; the password is everything after the first ':'.
Messages never repeat a password or an entry's text, only where the entry is.
"""
from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class AccessError(ValueError):
    """Unusable credentials (an entry without ':' or a user name, an unreadable file)."""


def parse_credentials(text: str, source: str) -> dict[str, str]:
    """user -> password from `text`; `source` (an option or a file) names where a bad entry is."""
    users: dict[str, str] = {}
    lines = text.splitlines()
    for line_no, line in enumerate(lines, 1):
        for entry_no, entry in enumerate(line.split(","), 1):
            entry = entry.strip()
            if not entry:
                continue
            where = f"{source}, line {line_no}, entry {entry_no}" if len(lines) > 1 else f"{source}, entry {entry_no}"
            user, sep, password = entry.partition(":")
            if not sep:
                raise AccessError(f"{where}: no ':' in it; write user:password")
            if not user.strip():
                raise AccessError(f"{where}: the user name before ':' is empty; write user:password")
            users[user.strip()] = password
    return users


def read_credentials_file(path: str | Path, source: str) -> dict[str, str]:
    """The user:password entries of a file (UTF-8, as the WebUI reads --gradio-auth-path)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AccessError(f"{source} {path}: cannot be read ({e.__class__.__name__}: {e}); give a UTF-8 "
                          "text file of user:password entries") from None
    users = parse_credentials(text, f"{source} {path}")
    if not users:
        raise AccessError(f"{source} {path}: holds no user:password entry; add one, or leave the option out")
    return users


def basic_auth_dependencies(users: dict[str, str]) -> list:
    """FastAPI dependencies that answer 401 unless the request carries one of `users` (HTTP Basic);
    none when `users` is empty."""
    if not users:
        return []
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic

    basic = HTTPBasic()

    # no annotation: FastAPI would look a string annotation up in this module's globals
    def check(credentials=Depends(basic)):
        expected = users.get(credentials.username)
        # compare even for an unknown user, so the answer takes as long either way
        given = credentials.password.encode()
        if hmac.compare_digest((expected or "\0").encode(), given) and expected is not None:
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return [Depends(check)]


def is_loopback(host: str) -> bool:
    """Whether a server bound to `host` is reachable only from this machine."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False     # any other name may resolve to an outside address
