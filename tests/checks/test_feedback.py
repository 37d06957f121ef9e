"""The shared layer's own behaviour where no chapter's test pins it down."""

from __future__ import annotations

import pytest

from glassbox.exercise_checks.feedback import ExerciseFailed, call_learner, check_number

from checks.conftest import fails_with, random_gpt2


def test_a_fractional_count_is_named_without_claiming_what_is_counted() -> None:
    message = fails_with(check_number, 12.5, 12, "queries_for_width", integer=True,
                         match="queries_for_width should be a whole number, got 12.5")
    assert "A count is a whole number" in message and "Parameter" not in message


def test_a_hook_left_on_the_model_is_named() -> None:
    model = random_gpt2(n_layer=1, n_head=2, n_embd=8, vocab_size=20)

    def leaves_a_hook(m):
        m.transformer.h[0].register_forward_hook(lambda *args: None)
    with pytest.raises(ExerciseFailed, match=r"left \+1 hook\(s\) registered on it"):
        call_learner(leaves_a_hook, model, model=model)


def test_second_gpt2_is_a_fresh_copy_each_time() -> None:
    import torch

    from glassbox.exercise_checks.feedback import second_gpt2
    like = random_gpt2(n_layer=1, n_head=2, n_embd=8, vocab_size=20)
    first = second_gpt2(like)
    with torch.no_grad():
        first.transformer.wte.weight.add_(1.0)  # what a careless learner's function might do
    again = second_gpt2(like)
    assert not torch.equal(first.transformer.wte.weight, again.transformer.wte.weight)
    assert again.config.vocab_size == 20 and second_gpt2(like, vocab_size=7).config.vocab_size == 7
