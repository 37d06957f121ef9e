"""Shared test set-up (at the root, so it also applies to `pytest notebooks/` alone): every test and every nbval notebook run under the recording environment.

The environment is applied at import time, before any kernel starts, so the notebooks
are checked under exactly the settings their stored outputs were recorded with.
"""

from glassbox.course_env import apply_recording_env

apply_recording_env()
