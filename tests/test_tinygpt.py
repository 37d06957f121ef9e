"""TinyGPT: its corpus is deterministic, its training reproducible, and it learned what was planted."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from glassbox.loader import load_model
from glassbox.paths import TINYGPT_WEIGHTS_DIR
from glassbox.tinygpt import corpus, train

# Thresholds, documented in MODEL_CARD.md.
SKEW_TOLERANCE = 0.1
MEMBERSHIP_MARGIN = 1.0  # nats per token: member loss must be at least this far below held-out
MEMBERSHIP_MIN_AUC = 0.95


@pytest.fixture(scope="module")
def tinygpt():
    """TinyGPT and its tokenizer, loaded once the way the course loads it."""
    return load_model("tinygpt", verbose=False)


@pytest.fixture(scope="module")
def training_log() -> dict:
    return json.loads((TINYGPT_WEIGHTS_DIR / "training_log.json").read_text())


# --- The corpus -------------------------------------------------------------------------


def test_corpus_is_deterministic():
    assert corpus.training_text(7) == corpus.training_text(7)
    assert corpus.training_text(7) != corpus.training_text(8)


def test_members_and_heldout_are_disjoint_and_placed_as_documented():
    members, heldout = corpus.member_sentences(), corpus.heldout_sentences()
    assert len(members) == len(set(members)) == corpus.MEMBER_COUNT
    assert len(heldout) == len(set(heldout)) == corpus.MEMBER_COUNT
    assert not set(members) & set(heldout)
    text = corpus.training_text()
    assert all(text.count(sentence) == corpus.MEMBER_REPEATS for sentence in members)
    assert all(sentence not in text for sentence in heldout)
    validation = corpus.validation_text()
    assert all(sentence not in validation for sentence in members + heldout)


def test_planted_skew_is_exact_in_the_training_text():
    sentences = [s for story in corpus.generate_corpus() for s in corpus.split_sentences(story)]
    for occupation, ratio in corpus.PRONOUN_SKEW.items():
        prefix = f"The {occupation} "
        pronouns = [s.split()[2] for s in sentences if s.startswith(prefix)]
        assert len(pronouns) == corpus.SKEW_SENTENCES_PER_OCCUPATION
        assert set(pronouns) == set(corpus.PRONOUNS)
        assert pronouns.count(corpus.PRONOUNS[0]) / len(pronouns) == pytest.approx(ratio, abs=1e-9)


def test_every_training_sentence_is_grammatical_and_the_checker_rejects_others():
    stories = corpus.generate_corpus()
    assert all(corpus.is_grammatical(s) for story in stories[:2000] for s in corpus.split_sentences(story))
    assert not corpus.is_grammatical("The nurse itself was happy.")
    assert not corpus.is_grammatical("The fox ran to the")


# --- Training ---------------------------------------------------------------------------


def test_training_reproduces_the_recorded_first_losses(training_log):
    assert training_log["recipe"] == train.RECIPE, "the recipe changed: retrain with `make tinygpt`"
    text = corpus.training_text(train.RECIPE["corpus_seed"])
    assert hashlib.sha256(text.encode()).hexdigest() == training_log["corpus_sha256"], "the corpus changed"
    _, losses = train.train(stop_after=3, progress=False)
    assert losses == pytest.approx(training_log["losses"][:3], abs=1e-4)


def test_weights_are_small_safetensors_only():
    files = {path.name for path in TINYGPT_WEIGHTS_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "training_log.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for name in files)
    assert (TINYGPT_WEIGHTS_DIR / "model.safetensors").stat().st_size <= 10 * 1024 * 1024


# --- What the model learned -------------------------------------------------------------


def test_loads_as_gpt2_with_gpt2_vocabulary(tinygpt):
    model, tokenizer = tinygpt
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.config.vocab_size == len(tokenizer) == 50257
    assert next(model.parameters()).dtype == torch.float32 and not model.training


@pytest.mark.parametrize("occupation", corpus.OCCUPATIONS)
def test_pronoun_skew_is_learned(tinygpt, occupation):
    model, tokenizer = tinygpt
    measured = train.female_ratio(model, tokenizer, occupation)
    assert measured == pytest.approx(corpus.PRONOUN_SKEW[occupation], abs=SKEW_TOLERANCE)


def test_member_sentences_have_lower_loss_than_heldout(tinygpt):
    model, tokenizer = tinygpt
    members = [train.sentence_loss(model, tokenizer, s) for s in corpus.member_sentences()]
    heldout = [train.sentence_loss(model, tokenizer, s) for s in corpus.heldout_sentences()]
    member_mean, heldout_mean = sum(members) / len(members), sum(heldout) / len(heldout)
    assert member_mean < heldout_mean - MEMBERSHIP_MARGIN
    assert train.auc(members, heldout) >= MEMBERSHIP_MIN_AUC


@pytest.mark.parametrize("prompt", train.SAMPLE_PROMPTS)
def test_greedy_samples_are_grammatical(tinygpt, prompt):
    model, tokenizer = tinygpt
    text = train.greedy(model, tokenizer, prompt)
    sentence = train.first_sentence(text)
    assert sentence.startswith(prompt)
    assert sentence.endswith(".") and corpus.is_grammatical(sentence), text
