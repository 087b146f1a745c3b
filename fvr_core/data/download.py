"""Downloading the Kaggle set "Fake-Vs-Real-Faces (Hard)" with kagglehub.

Public data sets need no Kaggle credentials. An unversioned handle always asks Kaggle's API for
the newest version; a versioned one ("owner/name/versions/N") is served from kagglehub's cache
offline once downloaded. Without a network the download fails at once with a message that says
how to place the data by hand.
"""

from __future__ import annotations

from pathlib import Path

from fvr_core.data.dataset import DataError, find_dataset_root

KAGGLE_HANDLE = "hamzaboulahia/hardfakevsrealfaces"
KAGGLE_URL = "https://www.kaggle.com/datasets/hamzaboulahia/hardfakevsrealfaces"


class DownloadError(RuntimeError):
    """The data set could not be fetched; the message says how to get it by hand."""


def manual_instructions(handle: str = KAGGLE_HANDLE) -> str:
    return (
        f"To place the data by hand: on a machine with internet, download the archive of {handle} "
        f"from {KAGGLE_URL} (Download button), unzip it, and copy the folder holding fake/, real/ "
        "and data.csv to this machine; then pass that folder as --data (or choose it on the Data page)."
    )


def download_kaggle(handle: str = KAGGLE_HANDLE, force: bool = False) -> Path:
    """Download (or find in kagglehub's cache) the data set; returns the folder holding fake/ and real/."""
    try:
        import kagglehub  # kagglehub loads on first use (start-up speed)
    except ImportError:
        raise DownloadError("kagglehub is not installed: pip install kagglehub. " + manual_instructions(handle)) from None
    try:
        path = kagglehub.dataset_download(handle, force_download=force)
    except Exception as exc:  # kagglehub raises requests', its own and OS errors alike
        reason = f"{type(exc).__name__}: {exc}"
        if len(reason) > 300:
            reason = reason[:300] + "..."
        raise DownloadError(
            f"could not download {handle} from Kaggle ({reason}). This machine may be offline or Kaggle "
            f"unreachable. {manual_instructions(handle)}"
        ) from None
    try:
        return find_dataset_root(path)
    except DataError as exc:
        raise DownloadError(f"downloaded {handle} to {path}, but {exc}") from None
