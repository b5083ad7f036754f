"""The error every capture module raises."""

from __future__ import annotations


class CaptureError(RuntimeError):
    """A capture could not be started or did not end with complete files."""
