"""Where the course's files live, wherever the notebooks are opened from."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR: Path = Path(__file__).resolve().parent
REPO_DIR: Path = PACKAGE_DIR.parent
DATA_DIR: Path = REPO_DIR / "data"
TINYGPT_DIR: Path = PACKAGE_DIR / "tinygpt"
TINYGPT_WEIGHTS_DIR: Path = TINYGPT_DIR / "weights"
