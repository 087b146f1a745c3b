"""Durations as a person planning their time reads them (torch-free: live views and the CLI use it)."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """'45 s', '3 min', '1 h 20 min': as precise as a user planning their time needs."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 0.5:
        return "under 1 s"
    if round(seconds) < 60:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" if minutes == 0 else f"{hours} h {minutes} min"
