"""Imports a process makes before it starts threads.

CPython can deadlock when two threads import the same package with circular imports for the
first time at once: the stdlib's ``email`` package is one (``email.header`` and
``email.charset``/``email.encoders`` import each other through ``from email import ...``).
It is imported lazily by ``http.client`` (etcd watchers, the API client), ``urllib`` and
``cryptography.x509``, often from different threads of one daemon. A lab supervisor hung
that way before its first progress line (its PKI thread in ``email/encoders.py``, the main
thread in ``email/header.py``, both waiting on module locks), and the lab was "not ready
after 120s". Every daemon calls :func:`before_threads` first thing in ``main``.

Standard library only; it lives in ``kernel`` because every layer (cni, agent, testbed)
may import it.
"""

from __future__ import annotations


def before_threads() -> None:
    """Import, in the calling (main) thread, the packages threads would otherwise import
    concurrently: ``http.client`` brings ``email.parser``, ``email.message``, ``email.utils``,
    ``email.charset``, ``email.encoders`` and ``email.header`` (~17 ms, paid later anyway)."""
    import email.utils  # noqa: F401
    import http.client  # noqa: F401
