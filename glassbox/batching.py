"""Chapter 10's batching measurement: time per decoding step against batch size, measured honestly.

``decode_step_seconds`` times the decoding steps only (the prompt is processed first and not
timed), for every batch size in the same way: with a fixed number of threads, after a
warm-up, keeping the best of several runs. ``batching_gains`` turns those times into
throughput gains over batch 1 and names every gain that is impossible: with the same
weights and the same machine, generating for B sequences at once can at best make B times
the tokens per second of one sequence (the step would then cost no more than at batch 1).
A larger figure means batch 1 was disturbed (another program took the CPU), not that
batching worked miracles. Nothing here asserts on a time: the caller prints the result and
the problems.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

__all__ = ["batching_gains", "decode_step_seconds"]


def decode_step_seconds(model, prompt_ids, batch_sizes: Sequence[int], steps: int = 8, repeats: int = 3,
                        threads: int = 1) -> dict[int, float]:
    """Best-of-``repeats`` seconds per greedy decoding step, for each batch size.

    Each run processes the prompt (``batch`` copies of ``prompt_ids``, shape ``(1, n)``), then
    times ``steps`` single-token steps that reuse the key-value cache. ``torch.set_num_threads``
    is fixed to ``threads`` for the whole measurement and restored afterwards.
    """
    import torch

    if steps < 1 or repeats < 1 or threads < 1:
        raise ValueError("steps, repeats and threads must be at least 1")
    if any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be at least 1, got {list(batch_sizes)}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():

            def one_run(batch: int) -> float:
                ids = prompt_ids.repeat(batch, 1)
                out = model(input_ids=ids, use_cache=True)
                past, next_ids = out.past_key_values, out.logits[:, -1:].argmax(-1)
                start = time.perf_counter()
                for _ in range(steps):
                    out = model(input_ids=next_ids, past_key_values=past, use_cache=True)
                    past, next_ids = out.past_key_values, out.logits[:, -1:].argmax(-1)
                return (time.perf_counter() - start) / steps

            one_run(max(batch_sizes))  # warm-up: the first call pays one-off costs
            return {batch: min(one_run(batch) for _ in range(repeats)) for batch in batch_sizes}
    finally:
        torch.set_num_threads(before)


def batching_gains(step_seconds: Mapping[int, float],
                   tolerance: float = 0.05) -> tuple[dict[int, float], list[str]]:
    """Tokens-per-second gain of each batch size over batch 1, and the impossible ones.

    ``step_seconds`` maps batch size to seconds per decoding step and must include batch 1.
    The gain of batch B is ``B * t(1) / t(B)``: B tokens per step instead of one. A gain above
    B (by more than ``tolerance``, a relative margin for timer noise) is listed as a problem.
    """
    if 1 not in step_seconds:
        raise ValueError("step_seconds needs batch 1: every gain is relative to it")
    for batch, seconds in step_seconds.items():
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"batch {batch}: a step time must be a positive number of seconds, got {seconds!r}")
    base = step_seconds[1]
    gains = {batch: batch * base / seconds for batch, seconds in sorted(step_seconds.items())}
    problems = [f"batch {batch}: a gain of {gain:.1f}x is more than the batch size, which is impossible "
                f"(one step took {step_seconds[batch] * 1e3:.2f} ms against {base * 1e3:.2f} ms at batch 1); "
                "batch 1 was probably slowed by another program, so measure again"
                for batch, gain in gains.items() if gain > batch * (1 + tolerance)]
    return gains, problems
