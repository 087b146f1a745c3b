"""Memory of this process for the benchmarks: resident and peak resident set size (Linux's
/proc/self/status, where the peak can be reset)."""

from __future__ import annotations

from pathlib import Path


def rss_mb() -> tuple[float, float]:
    """(resident, peak resident) MB of this process."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
