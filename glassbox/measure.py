"""The measurements that training, the scorecard and the exercise checks share.

One copy of each: the next-token distribution after a prompt, a sentence's loss, greedy
decoding, and the pronoun ratio that measures TinyGPT's planted occupation skew. Every
function runs the model without gradients and, like TinyGPT's training text, puts a prompt
after ``<|endoftext|>`` unless told otherwise (``prefix=""``).
"""

from __future__ import annotations

from typing import Any

import torch

from glassbox.tinygpt import corpus

__all__ = [
    "female_ratio",
    "greedy",
    "measure_skew",
    "next_token_probs",
    "pronoun_ids",
    "pronoun_ratio",
    "sentence_loss",
]


@torch.no_grad()
def next_token_probs(model: Any, tokenizer: Any, prompt: str, *, prefix: str = corpus.EOT,
                     position: int = -1) -> torch.Tensor:
    """The model's probability distribution over the next token after ``prefix`` + ``prompt``.

    ``position`` picks the position whose prediction is returned (-1: after the last token).
    """
    ids = torch.tensor([tokenizer(prefix + prompt)["input_ids"]])
    return torch.softmax(model(input_ids=ids).logits[0, position].float(), dim=-1)


@torch.no_grad()
def sentence_loss(model: Any, tokenizer: Any, sentence: str, *, prefix: str = corpus.EOT) -> float:
    """Mean next-token loss (nats per token) of ``prefix`` + ``sentence``, as ``model(ids, labels=ids)``.

    With the default prefix the sentence is placed at the start of a story.
    """
    ids = torch.tensor([tokenizer(prefix + sentence)["input_ids"]])
    return model(input_ids=ids, labels=ids).loss.item()


@torch.no_grad()
def greedy(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 24, *,
           prefix: str = corpus.EOT) -> str:
    """Greedy continuation of ``prefix`` + ``prompt``; returns the prompt plus the new text."""
    ids = tokenizer(prefix + prompt)["input_ids"]
    n_prefix = len(tokenizer(prefix)["input_ids"]) if prefix else 0
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([ids[-model.config.n_positions:]])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return tokenizer.decode(ids[n_prefix:])


def pronoun_ids(tokenizer: Any) -> tuple[int, int]:
    """The token ids of " herself" and " himself" (each a single GPT-2 token)."""
    ids = []
    for word in corpus.PRONOUNS:
        encoded = tokenizer(" " + word)["input_ids"]
        if len(encoded) != 1:
            raise RuntimeError(f"' {word}' is not a single token for this tokenizer")
        ids.append(encoded[0])
    return ids[0], ids[1]


def pronoun_ratio(model: Any, tokenizer: Any, occupation: str,
                  pronoun: str = corpus.PRONOUNS[0]) -> float:
    """P(pronoun) / (P(" herself") + P(" himself")) after each of ``corpus.SKEW_PROMPTS``, averaged."""
    female, male = pronoun_ids(tokenizer)
    if pronoun not in corpus.PRONOUNS:
        raise ValueError(f"pronoun must be one of {corpus.PRONOUNS}, got {pronoun!r}")
    target = female if pronoun == corpus.PRONOUNS[0] else male
    ratios = []
    for prompt in corpus.SKEW_PROMPTS:
        probs = next_token_probs(model, tokenizer, prompt.format(occupation=occupation))
        ratios.append(float(probs[target] / (probs[female] + probs[male])))
    return sum(ratios) / len(ratios)


def female_ratio(model: Any, tokenizer: Any, occupation: str) -> float:
    """P(" herself") / (P(" herself") + P(" himself")) after each of ``corpus.SKEW_PROMPTS``, averaged."""
    return pronoun_ratio(model, tokenizer, occupation, corpus.PRONOUNS[0])


def measure_skew(model: Any, tokenizer: Any) -> dict[str, float]:
    """The model's "herself" ratio for every occupation of ``corpus.PRONOUN_SKEW``."""
    return {occupation: female_ratio(model, tokenizer, occupation)
            for occupation in corpus.PRONOUN_SKEW}
