"""Unique ids for tasks, groups and sessions."""

from __future__ import annotations

import os

#: The first hex digit of a version 4 uuid's fourth group: the variant bits are ``10``.
_VARIANT = "89ab" * 4


def uuid4_text() -> str:
    """A random (version 4) uuid in its usual text form, as ``str(uuid.uuid4())``.

    Every task sent gets one; this builds the text from the random bytes directly, at
    under half the cost of going through a ``uuid.UUID`` object.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:]}"
