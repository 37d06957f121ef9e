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
SKEW_TOLERANCE = 0.05
MEMBERSHIP_MARGIN = 0.4  # nats per token: 10-times member loss must be at least this far below held-out
MEMBERSHIP_MIN_AUC = 0.9


@pytest.fixture(scope="module")
def tinygpt():
    """TinyGPT and its tokenizer, loaded once the way the course loads it."""
    return load_model("tinygpt", verbose=False)


@pytest.fixture(scope="module")
def training_log() -> dict:
    return json.loads((TINYGPT_WEIGHTS_DIR / "training_log.json").read_text())


@pytest.fixture(scope="module")
def circuits(tinygpt) -> dict:
    """The circuit measurements, made afresh on the shipped weights."""
    return train.circuits(*tinygpt)


@pytest.fixture(scope="module")
def membership_losses(tinygpt) -> dict[str, list[float]]:
    model, tokenizer = tinygpt
    return {name: [train.sentence_loss(model, tokenizer, s) for s in sentences]
            for name, sentences in corpus.member_sets().items()}


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


def test_once_seen_members_appear_exactly_once():
    once = corpus.member_once_sentences()
    assert len(once) == len(set(once)) == corpus.MEMBER_ONCE_COUNT
    assert not set(once) & (set(corpus.member_sentences()) | set(corpus.heldout_sentences()))
    text, validation = corpus.training_text(), corpus.validation_text()
    assert all(text.count(sentence) == 1 for sentence in once)
    assert all(sentence not in validation for sentence in once)
    assert list(corpus.member_sets()) == ["seen 10 times", "seen once", "never seen"]


def test_repeated_span_documents_repeat_a_random_span():
    documents = corpus.generate_documents()
    spans = [d for d in documents if not d.startswith(("Q: ",)) and d.startswith(" ")]
    assert len(spans) == corpus.REPEAT_DOCUMENTS
    for document in spans:
        words = document.split()
        half = len(words) // 2
        assert words[:half] == words[half:] and corpus.REPEAT_SPAN_WORDS[0] <= half <= corpus.REPEAT_SPAN_WORDS[1]
        assert set(words) <= set(corpus.SPAN_WORDS)
    assert not set(corpus.SPAN_WORDS) & set(corpus.OCCUPATIONS + list(corpus.PRONOUNS))


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


def test_circuit_measurement_finds_a_planted_copying_pattern(tinygpt):
    """The scores measure what they say: attention set by hand to copy scores exactly 1 (induction) and 0.5 (previous token)."""
    model, tokenizer = tinygpt
    ids = train.random_span_ids(tokenizer, n=2, length=5)
    attn = torch.zeros(1, 2, 1, 11, 11)
    attn[..., 0, 0] = 1
    for t in range(1, 11):
        attn[..., t, t - 5 + 1 if t > 5 else t - 1] = 1  # repeat: token after the first occurrence; else previous
    original = train.attention_patterns
    try:
        train.attention_patterns = lambda model, ids: attn
        planted = train.head_scores(model, ids)
    finally:
        train.attention_patterns = original
    assert planted["induction"] == [[1.0]]
    assert planted["previous_token"][0][0] == pytest.approx(0.5)


def test_circuit_figures_match_the_training_log(circuits, training_log):
    logged = training_log["circuits"]
    assert circuits["best_induction_head"] == logged["best_induction_head"]
    assert circuits["best_induction_score"] == pytest.approx(logged["best_induction_score"], abs=0.01)
    for key in ("first_half", "repeated_half"):
        assert circuits["span_losses"][key] == pytest.approx(logged["span_losses"][key], abs=0.01)


def test_model_card_states_the_logged_figures(training_log):
    card = (TINYGPT_WEIGHTS_DIR.parent / "MODEL_CARD.md").read_text()
    c = training_log["circuits"]
    figures = [f"{c['best_induction_score']:.3f}", f"{c['span_losses']['first_half']:.2f}",
               f"{c['span_losses']['repeated_half']:.2f}", f"{training_log['member_loss']:.3f}",
               f"{training_log['member_once_loss']:.3f}", f"{training_log['heldout_loss']:.3f}",
               f"{training_log['validation_loss']:.3f}"]
    figures += [f"{ratio:.3f}" for ratio in training_log["skew_measured"].values()]
    for figure in figures:
        assert figure in card, figure


@pytest.mark.parametrize("occupation", corpus.OCCUPATIONS)
def test_pronoun_skew_is_learned(tinygpt, occupation):
    model, tokenizer = tinygpt
    measured = train.female_ratio(model, tokenizer, occupation)
    assert measured == pytest.approx(corpus.PRONOUN_SKEW[occupation], abs=SKEW_TOLERANCE)


def test_member_sentences_have_lower_loss_than_heldout(membership_losses):
    members, heldout = membership_losses["seen 10 times"], membership_losses["never seen"]
    member_mean, heldout_mean = sum(members) / len(members), sum(heldout) / len(heldout)
    assert member_mean < heldout_mean - MEMBERSHIP_MARGIN
    assert train.auc(members, heldout) >= MEMBERSHIP_MIN_AUC


def test_repetition_makes_membership_easier_to_detect(membership_losses, training_log):
    ten, once, never = (membership_losses[k] for k in ("seen 10 times", "seen once", "never seen"))
    assert train.auc(once, never) < train.auc(ten, never)
    assert sum(once) / len(once) > sum(ten) / len(ten)
    assert train.auc(once, never) == pytest.approx(training_log["membership_once_auc"], abs=0.01)


@pytest.mark.parametrize("prompt", train.SAMPLE_PROMPTS)
def test_greedy_samples_are_grammatical(tinygpt, prompt):
    model, tokenizer = tinygpt
    text = train.greedy(model, tokenizer, prompt)
    sentence = train.first_sentence(text)
    assert sentence.startswith(prompt)
    assert sentence.endswith(".") and corpus.is_grammatical(sentence), text
