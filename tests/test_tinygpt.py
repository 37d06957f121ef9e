"""TinyGPT: its corpus is deterministic, its training reproducible, and it learned what was planted."""

from __future__ import annotations

import hashlib
import itertools
import json
import math

import pytest
import torch

from glassbox.loader import load_model
from glassbox.paths import TINYGPT_WEIGHTS_DIR
from glassbox.tinygpt import corpus, train

# Thresholds, documented in MODEL_CARD.md.
SKEW_TOLERANCE = 0.05
MEMBERSHIP_MARGIN = 0.4  # nats per token: 10-times member loss must be at least this far below held-out
MEMBERSHIP_MIN_AUC = 0.9
INDUCTION_MIN_SCORE = 0.5  # the goal: at least one head puts half its attention on the token after the copy
PREVIOUS_TOKEN_MIN_SCORE = 0.5  # ... helped by a head in an earlier layer that puts half on the previous token
REPEAT_MIN_DROP = 2.0  # nats per token: the repeat must be this much easier than the first occurrence


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


def test_span_stream_gives_fresh_repeated_spans_from_its_seed():
    first = list(itertools.islice(corpus.repeated_span_stream(), 200))
    assert first == list(itertools.islice(corpus.repeated_span_stream(), 200))
    assert first != list(itertools.islice(corpus.repeated_span_stream(corpus.SPAN_STREAM_SEED + 1), 200))
    for words in first:
        half = len(words) // 2
        assert words[:half] == words[half:] and corpus.REPEAT_SPAN_WORDS[0] <= half <= corpus.REPEAT_SPAN_WORDS[1]
        assert set(words) <= set(corpus.SPAN_WORDS)


def test_span_rows_are_whole_documents_after_end_of_text():
    stream = corpus.repeated_span_stream()
    documents = list(itertools.islice(corpus.repeated_span_stream(), 10))
    word_ids = {word: i for i, word in enumerate(corpus.SPAN_WORDS)}
    row = train.span_row(stream, word_ids, eot=-1, block_size=64)
    expected = [i for words in documents for i in [-1] + [word_ids[w] for w in words]][:64]
    assert row == expected


# --- Training ---------------------------------------------------------------------------


def test_training_on_the_corpus_vocabulary_is_the_full_vocabulary_loss():
    """A model trained on the corpus's tokens plus one shared row, written back into GPT-2's vocabulary,
    gives the same loss as training computed (the shared row counted once per unused token)."""
    torch.manual_seed(0)
    used = torch.tensor([5, 17, 220, 50256])
    recipe = dict(train.RECIPE, n_layer=1, n_head=2, n_embd=8)
    small = train.GPT2LMHeadModel(train.make_config(recipe, vocab_size=len(used) + 1)).eval()
    with torch.no_grad():
        small.transformer.wte.weight.normal_(0, 1.0)  # rows far apart, so a misplaced row shows
    full = train.to_gpt2_vocabulary(small, used, recipe)
    ids = torch.tensor([[3, 0, 1, 2, 1, 0, 3]])
    shared = torch.zeros(len(used) + 1)
    shared[-1] = math.log(recipe["vocab_size"] - len(used))
    logits = small(input_ids=ids).logits[:, :-1] + shared
    small_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(used) + 1), ids[:, 1:].reshape(-1))
    assert full(input_ids=used[ids], labels=used[ids]).loss.item() == pytest.approx(small_loss.item(), rel=1e-5)
    unused = torch.ones(recipe["vocab_size"], dtype=torch.bool)
    unused[used] = False
    assert torch.equal(full.transformer.wte.weight[unused], small.transformer.wte.weight[-1].expand(int(unused.sum()), -1))


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


def test_an_induction_head_formed_after_a_previous_token_head(circuits):
    layer, head = circuits["best_induction_head"]
    assert circuits["best_induction_score"] >= INDUCTION_MIN_SCORE, circuits["induction"]
    assert layer > 0 and circuits["best_earlier_previous_token_score"] >= PREVIOUS_TOKEN_MIN_SCORE, circuits["previous_token"]


def test_the_induction_head_matches_content_not_a_fixed_distance(tinygpt, circuits):
    """On spans of other lengths the same head still finds the token after the copy: it does not
    attend a fixed 19 positions back (the distance in the 20-word measurement)."""
    model, tokenizer = tinygpt
    layer, head = circuits["best_induction_head"]
    for length in (7, 13, 27):
        scores = train.head_scores(model, train.random_span_ids(tokenizer, n=16, length=length, seed=length))
        assert scores["induction"][layer][head] >= INDUCTION_MIN_SCORE, (length, scores["induction"][layer])


def test_the_repeat_is_predicted(circuits):
    losses = circuits["span_losses"]
    assert losses["drop"] >= REPEAT_MIN_DROP, losses


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


MIN_GRAMMATICAL_SAMPLES = 4  # of the 5 story prompts; MODEL_CARD.md states it and shows the samples


def test_greedy_samples_are_the_logged_ones_and_mostly_grammatical(tinygpt, training_log):
    model, tokenizer = tinygpt
    prompts = [p for p in train.SAMPLE_PROMPTS if p]
    samples = {p: train.greedy(model, tokenizer, p) for p in prompts}
    assert samples == {p: training_log["greedy_samples"][p] for p in prompts}
    grammatical = []
    for prompt, text in samples.items():
        sentence = train.first_sentence(text)
        assert sentence.startswith(prompt), text
        grammatical += [sentence.endswith(".") and corpus.is_grammatical(sentence)]
    assert sum(grammatical) >= MIN_GRAMMATICAL_SAMPLES, samples


def test_after_end_of_text_alone_the_model_writes_span_words(tinygpt):
    """7 of every 10 training rows are repeated-span documents, each after <|endoftext|>: with no prompt,
    the greedy continuation is span words (the model card's first sample), not a story."""
    model, tokenizer = tinygpt
    words = train.greedy(model, tokenizer, "").replace(corpus.EOT, " ").split()
    assert words and set(words) <= set(corpus.SPAN_WORDS), words
