"""Shared test set-up (at the root, so it also applies to `pytest notebooks/` alone): every test and every nbval notebook run under the recording environment.

The environment is applied at import time, before any kernel starts, so the notebooks
are checked under exactly the settings their stored outputs were recorded with.
tests/notebook_plugin.py runs each notebook once, spreads the work over both cores and
prints where the time went.
"""

from glassbox.course_env import apply_recording_env

apply_recording_env()

pytest_plugins = ["tests.notebook_plugin"]
