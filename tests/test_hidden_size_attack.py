"""The hidden size leaks through the API (issue 7, chapter 07), and the 2024 change stops it.

- Under the pre-2024 ``logit_bias`` behaviour, the attack of Carlini et al. (2024) recovers
  TinyGPT's hidden size from the course provider (a real uvicorn process, reached with the
  real ``openai`` client): only top-5 log-probabilities come back, a bias of +100 pushes a
  reference token and 4 chosen tokens into them, and the singular values of the recovered
  logit differences drop after h.
- Under the post-2024 behaviour the same queries recover almost nothing, and no drop at h.
- From the open model's logits, the same estimate finds gpt2-untrained's 768 (or 767: its
  final LayerNorm bias is 0, see FACTS.md).

The expected sizes come from the models' configs, never typed in. The estimator is the
reference the chapter's exercise is checked against (glassbox.exercise_checks.api_leaks).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from transformers import GPT2Config

from glassbox.exercise_checks.api_leaks import reference_hidden_size
from glassbox.loader import gpt2_tokenizer, load_model
from glassbox.paths import TINYGPT_WEIGHTS_DIR
from glassbox.provider import start_provider
from glassbox.tinygpt import corpus

BIAS = 100


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def tinygpt_h() -> int:
    return GPT2Config.from_pretrained(TINYGPT_WEIGHTS_DIR).n_embd


@pytest.fixture(scope="module")
def tinygpt():
    model, _ = load_model("tinygpt", verbose=False)
    return model


@pytest.fixture(scope="module")
def provider():
    with start_provider("tinygpt", logit_bias_mode="pre-2024") as handle:
        yield handle


def story_prefixes(tokenizer, count: int, seed: int = 0) -> list[str]:
    """``count`` distinct prompts: the first 2 to 30 tokens of TinyGPT's validation stories."""
    rng = random.Random(seed)
    prompts: list[str] = []
    for story in corpus.validation_text().split(corpus.EOT):
        ids = tokenizer(story).input_ids
        if len(ids) < 3:
            continue
        prompt = tokenizer.decode(ids[: rng.randint(2, min(len(ids), 30))])
        if prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == count:
            return prompts
    raise AssertionError("not enough distinct prompts")


def attack_tokens(tokenizer, count: int) -> tuple[int, list[int], list[str]]:
    """A reference and ``count`` tokens from TinyGPT's corpus whose strings are unique in the vocabulary."""
    strings = tokenizer.batch_decode([[t] for t in range(len(tokenizer))])
    unique = Counter(strings)
    frequency = Counter(t for story in corpus.validation_text().split(corpus.EOT)[:2000]
                        for t in tokenizer(story).input_ids)
    usable = [t for t, _ in frequency.most_common() if unique[strings[t]] == 1 and "\ufffd" not in strings[t]]
    assert len(usable) > count, f"only {len(usable)} usable tokens"
    return usable[0], usable[1:count + 1], strings


def run_attack(provider, prompts: list[str], reference: int, tokens: list[int],
               strings: list[str]) -> torch.Tensor:
    """logit(t) - logit(reference) per prompt and token from top-5 logprobs (NaN where not returned)."""
    client = provider.client(max_retries=0)
    recovered = torch.full((len(prompts), len(tokens)), float("nan"), dtype=torch.float64)
    for start in range(0, len(tokens), 4):
        group = tokens[start:start + 4]
        reply = client.completions.create(model=provider.model_name, prompt=prompts, max_tokens=1, logprobs=5,
                                          temperature=0, logit_bias={str(t): BIAS for t in [reference] + group})
        assert len(reply.choices) == len(prompts)
        for choice in reply.choices:
            top = choice.logprobs.top_logprobs[0]
            assert len(top) <= 6  # the top 5, plus the generated token when it is not among them (as OpenAI)
            if strings[reference] not in top:
                continue
            for j, token in enumerate(group):
                if strings[token] in top:
                    recovered[choice.index, start + j] = top[strings[token]] - top[strings[reference]]
    return recovered


def estimate(recovered: torch.Tensor) -> int:
    """The hidden size from recovered differences: the reference's own column (all 0) goes first."""
    matrix = torch.nan_to_num(recovered, nan=0.0)
    return reference_hidden_size(torch.cat([torch.zeros(len(matrix), 1, dtype=matrix.dtype), matrix], dim=1))


@pytest.fixture(scope="module")
def attack_setup(tokenizer, tinygpt_h):
    prompts = story_prefixes(tokenizer, tinygpt_h + 8)
    reference, tokens, strings = attack_tokens(tokenizer, tinygpt_h + 16)
    return prompts, reference, tokens, strings


def open_logits(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    """The open model's next-token logits after each prompt, (n, V) in float64."""
    with torch.no_grad():
        rows = [model(torch.tensor([tokenizer(p).input_ids]), logits_to_keep=1).logits[0, -1] for p in prompts]
    return torch.stack(rows).double()


def test_pre_2024_logit_bias_reveals_tinygpt_hidden_size(provider, attack_setup, tinygpt_h, tinygpt,
                                                         tokenizer) -> None:
    prompts, reference, tokens, strings = attack_setup
    provider.set_logit_bias_mode("pre-2024")
    recovered = run_attack(provider, prompts, reference, tokens, strings)
    assert not recovered.isnan().any(), "every biased token should come back in the top 5"
    # The recovered numbers are the model's own logit differences (checked against the open weights).
    logits = open_logits(tinygpt, tokenizer, prompts)
    truth = logits[:, tokens] - logits[:, [reference]]
    assert float((recovered - truth).abs().max()) < 1e-3
    assert estimate(recovered) in {tinygpt_h, tinygpt_h - 1}


def test_post_2024_logit_bias_stops_the_attack(provider, attack_setup, tinygpt_h) -> None:
    prompts, reference, tokens, strings = attack_setup
    provider.set_logit_bias_mode("post-2024")
    try:
        recovered = run_attack(provider, prompts, reference, tokens, strings)
    finally:
        provider.set_logit_bias_mode("pre-2024")
    known = float((~recovered.isnan()).float().mean())
    assert known < 0.1, f"{known:.1%} of the logit differences still came back"
    assert estimate(recovered) not in {tinygpt_h, tinygpt_h - 1}


def test_post_2024_still_samples_the_bias_but_returns_unbiased_logprobs(provider, attack_setup, tinygpt,
                                                                        tokenizer) -> None:
    """What the change is: the bias still steers the generated token; the logprobs ignore it.

    As OpenAI documents for completions, the generated token's own logprob comes back too,
    as a sixth entry when it is not in the top 5, and it is the unbiased one as well.
    """
    prompts, reference, tokens, strings = attack_setup
    client = provider.client(max_retries=0)
    forced = tokens[-1]
    plain = client.completions.create(model=provider.model_name, prompt=prompts[0], max_tokens=1, logprobs=5,
                                      temperature=0).choices[0]
    provider.set_logit_bias_mode("post-2024")
    try:
        biased = client.completions.create(model=provider.model_name, prompt=prompts[0], max_tokens=1, logprobs=5,
                                           temperature=0, logit_bias={str(forced): BIAS}).choices[0]
    finally:
        provider.set_logit_bias_mode("pre-2024")
    assert biased.text == strings[forced] != plain.text
    plain_top, biased_top = plain.logprobs.top_logprobs[0], dict(biased.logprobs.top_logprobs[0])
    assert strings[forced] not in plain_top
    sampled = biased_top.pop(strings[forced])
    assert biased_top == pytest.approx(plain_top, abs=1e-5)
    true_logprob = float(open_logits(tinygpt, tokenizer, prompts[:1])[0].log_softmax(-1)[forced])
    assert sampled == pytest.approx(true_logprob, abs=1e-4)
    assert biased.logprobs.token_logprobs[0] == pytest.approx(true_logprob, abs=1e-4)


def test_open_logits_reveal_gpt2_untrained_hidden_size() -> None:
    model, _ = load_model("gpt2-untrained", verbose=False)
    h, vocab = model.config.n_embd, model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(vocab, (h + 16, 2), generator=generator)  # short: the forward passes dominate
    columns = torch.randperm(vocab, generator=generator)[: 2 * h]  # any m > h columns keep rank h
    with torch.no_grad():
        logits = torch.cat([model(prompts[i:i + 64], logits_to_keep=1).logits[:, -1, columns]
                            for i in range(0, len(prompts), 64)])
    assert float(model.transformer.ln_f.bias.detach().abs().max()) == 0.0
    assert reference_hidden_size(logits) in {h, h - 1}
