"""The suite's own plugin (tests/notebook_plugin.py): what it does to the tests it runs.

Its verdict items are tested in tests/test_exercises.py (they agree with ``make check``).
"""

from __future__ import annotations

import torch

from tests import notebook_plugin


def test_a_test_that_raises_torch_threads_leaves_one_thread_to_the_next() -> None:
    # what a training recipe does (glassbox.tinygpt.chat_train sets its recipe's 2 threads)
    torch.set_num_threads(2)
    assert torch.get_num_threads() == 2
    notebook_plugin.pytest_runtest_teardown(item=None, nextitem=None)  # after every test
    assert notebook_plugin._TORCH_THREADS == 1  # the recording environment's OMP_NUM_THREADS
    assert torch.get_num_threads() == 1
