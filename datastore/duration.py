"""Go durations (``90s``, ``1m30s``, ``500ms``, ``-1.5h``): the project's one parser.

Calico's resources store durations as Go's ``time.Duration`` strings
(``metav1.Duration``: FelixConfiguration intervals, BGPConfiguration restart times,
KubeControllersConfiguration periods) and its tools read flags with
``time.ParseDuration``. :func:`parse_duration` accepts exactly what that function
accepts and words its errors the same way; callers add the name of the setting.
"""

from __future__ import annotations

import re

#: seconds per unit, as time.ParseDuration knows them ("µs" in both Unicode spellings)
UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
         "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)([^\d.]*)")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


def parse_duration(text: str, *, bare_seconds: bool = False) -> float:
    """Seconds in the Go duration ``text`` (``time.ParseDuration``'s grammar: an optional
    sign, then one or more decimal numbers each with a unit ns, us, ms, s, m or h; ``0``
    alone needs no unit).

    With ``bare_seconds`` a plain number is taken as seconds, as Felix's environment
    variables and kubectl's ``--request-timeout`` take it. Raises ValueError worded as
    Go's (``time: invalid duration "x"``, ``time: missing unit in duration "1"``,
    ``time: unknown unit "d" in duration "1d"``).
    """
    raw = text
    text = text.strip() if isinstance(text, str) else ""
    if bare_seconds and _NUMBER.fullmatch(text):
        return float(text)
    sign = 1.0
    if text[:1] in ("+", "-"):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f'time: invalid duration "{raw}"')
    total, pos = 0.0, 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            raise ValueError(f'time: invalid duration "{raw}"')
        number, unit = m.groups()
        if not unit:
            raise ValueError(f'time: missing unit in duration "{raw}"')
        if unit not in UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{raw}"')
        total += float(number) * UNITS[unit]
        pos = m.end()
    return sign * total
