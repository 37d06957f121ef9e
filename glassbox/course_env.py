"""The environment variables under which notebooks are run headlessly.

This is the one place they are set. The tests (tests/conftest.py), the script that
refreshes stored outputs and the scripts behind ``make run`` and ``make bench`` all
apply them, so stored outputs are recorded under exactly the settings that check them.
"""

from __future__ import annotations

import os

# Quiet output: no progress bars, no library chatter on stderr (nbval compares stderr).
QUIET_ENV: dict[str, str] = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}

# Recording and checking stored outputs: always offline, always TinyGPT.
RECORDING_ENV: dict[str, str] = {
    **QUIET_ENV,
    "HF_HUB_OFFLINE": "1",
    "GLASSBOX_MODEL": "tinygpt",
    # One torch thread per process: TinyGPT's small passes are faster on one thread, and
    # under load (two test workers, or a busy machine) the default threads made them
    # 20-100x slower. Set before torch is imported, in the tests and in every kernel.
    "OMP_NUM_THREADS": "1",
}


def apply_quiet_env() -> None:
    """Silence progress bars and library logs, keeping the user's model choice."""
    os.environ.update(QUIET_ENV)


def apply_recording_env() -> None:
    """Set the exact environment used to record and to check stored notebook outputs."""
    os.environ.update(RECORDING_ENV)
