"""glassbox.measure: the one copy of the measurements training, the scorecard and the checks share.

Each is compared here with the same quantity computed another way, on a small random GPT-2
with GPT-2's tokenizer (built in milliseconds), so the test does not depend on TinyGPT's
weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from glassbox import measure
from glassbox.loader import gpt2_tokenizer
from glassbox.tinygpt import corpus


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50257, n_positions=64)
    return GPT2LMHeadModel(config).eval(), gpt2_tokenizer()


def test_next_token_probs_is_the_softmax_after_the_prefix(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    ids = tokenizer.encode(corpus.EOT + "The nurse")
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    assert torch.allclose(measure.next_token_probs(model, tokenizer, "The nurse"),
                          logits[-1].softmax(-1), atol=1e-7)
    assert torch.allclose(measure.next_token_probs(model, tokenizer, corpus.EOT + "The nurse",
                                                   prefix="", position=-2),
                          logits[-2].softmax(-1), atol=1e-7)


def test_sentence_loss_is_the_mean_cross_entropy(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    text = "The cat ran to the garden."
    ids = torch.tensor(tokenizer.encode(text))
    with torch.no_grad():
        logits = model(ids[None]).logits[0]
    by_hand = float(torch.nn.functional.cross_entropy(logits[:-1], ids[1:]))
    assert math.isclose(measure.sentence_loss(model, tokenizer, text, prefix=""), by_hand, rel_tol=1e-5)
    assert measure.sentence_loss(model, tokenizer, text) != measure.sentence_loss(model, tokenizer, text, prefix="")


def test_greedy_appends_the_argmax_tokens(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    text = measure.greedy(model, tokenizer, "The cat", max_new_tokens=3)
    ids = tokenizer.encode(corpus.EOT + "The cat")
    for _ in range(3):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert text == tokenizer.decode(ids[1:]) and text.startswith("The cat")


def test_the_two_pronoun_ratios_add_up_to_one(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    herself = measure.pronoun_ratio(model, tokenizer, "nurse", "herself")
    himself = measure.pronoun_ratio(model, tokenizer, "nurse", "himself")
    assert 0 < herself < 1 and math.isclose(herself + himself, 1.0, rel_tol=1e-6)
    assert measure.female_ratio(model, tokenizer, "nurse") == herself
    with pytest.raises(ValueError, match="pronoun must be one of"):
        measure.pronoun_ratio(model, tokenizer, "nurse", "themselves")
