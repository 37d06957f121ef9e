"""Chapter 08's checks: right answers pass, plausible wrong answers fail with their hint.

The model checks run on TinyGPT (bundled, loaded in about a second): it is the model
whose planted skew the chapter audits. Each test calls a check with a deliberately
wrong answer and asserts on the message the learner would see.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from glassbox.exercise_checks.auditing import (
    TRAP_TEXT,
    check_corpus_count,
    check_exact_ratio,
    check_queries_for_width,
    check_sampling_estimate,
    reference_corpus_count,
    reference_exact_ratio,
    wilson_interval,
)
from glassbox.tinygpt import corpus, train
from checks.conftest import fails_with

PRONOUNS = corpus.PRONOUNS


@pytest.fixture(scope="module")
def text() -> str:
    return corpus.training_text()


# ----------------------------------------------------------------- Wilson reference

def test_wilson_reference_properties() -> None:
    low, high = wilson_interval(81, 263)
    p, n, z = 81 / 263, 263, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    assert low < p < high and math.isclose((low + high) / 2, centre, rel_tol=1e-12)
    # at k = n the interval does not collapse (the Wald interval would be [1, 1])
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.8 < low < 0.9


# ----------------------------------------------------------------- sampling_estimate

def estimate_ok(samples, pronoun, z=1.96):
    words = [s.strip() for s in samples]
    n = sum(w in PRONOUNS for w in words)
    if n == 0:
        raise ValueError("no sample is a pronoun")
    k = sum(w == pronoun for w in words)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


API_SAMPLES = [" herself"] * 17 + [" himself"] * 3


def test_sampling_estimate_accepts_right_answer(capsys) -> None:
    check_sampling_estimate(estimate_ok, API_SAMPLES, "herself")
    out = capsys.readouterr().out
    assert out.startswith("✓") and out.count("\n") == 1 and "your API samples" in out


def test_sampling_estimate_without_pronoun_samples_does_not_claim_them(capsys) -> None:
    check_sampling_estimate(estimate_ok, [" the", " a"], "herself")  # another API, no bias
    assert "your API samples" not in capsys.readouterr().out


def wald(samples, pronoun, z=1.96):
    p, _, _ = estimate_ok(samples, pronoun, z)
    n = sum(s.strip() in PRONOUNS for s in samples)
    half = z * math.sqrt(p * (1 - p) / n)
    return p, p - half, p + half


@pytest.mark.parametrize("wrong, hint", [
    (wald, "Wald"),
    (lambda s, p, z=1.96: (lambda e, lo, hi: (e, hi, lo))(*estimate_ok(s, p, z)), "wrong way round"),
    (lambda s, p, z=1.96: (lambda e, lo, hi: (e, lo - 0.5, lo - 0.1))(*estimate_ok(s, p, z)),
     "does not contain the estimate"),
    (lambda s, p, z=1.96: estimate_ok(s, p, 1.96), "do not hard-code 1.96"),
    (lambda s, p, z=1.96: estimate_ok(s, p, 1.645), "90%"),
    (lambda s, p, z=1.96: (lambda e, lo, hi: (1 - e, lo, hi))(*estimate_ok(s, p, z)), "other pronoun"),
    (lambda s, p, z=1.96: (lambda e, lo, hi: (e * sum(x.strip() in PRONOUNS for x in s) / len(s),
                                              lo, hi))(*estimate_ok(s, p, z)),
     "divided by every sample"),
    (lambda s, p, z=1.96: (lambda e, lo, hi: (e, lo * 0.9, hi))(*estimate_ok(s, p, z)), "Wilson interval is"),
])
def test_sampling_estimate_known_mistakes(wrong, hint) -> None:
    fails_with(check_sampling_estimate, wrong, API_SAMPLES, "herself", match=hint)


def test_sampling_estimate_without_strip_gets_the_space_hint() -> None:
    def no_strip(samples, pronoun, z=1.96):
        k = sum(s == pronoun for s in samples)
        n = sum(s in PRONOUNS for s in samples)
        return k / n, 0.0, 1.0  # n is 0: ' herself' != 'herself'
    fails_with(check_sampling_estimate, no_strip, API_SAMPLES, "herself", match="leading space")


def test_sampling_estimate_all_samples_as_n_in_the_interval() -> None:
    def n_all(samples, pronoun, z=1.96):
        p, _, _ = estimate_ok(samples, pronoun, z)
        k = sum(s.strip() == pronoun for s in samples)
        return (p, *wilson_interval(k, len(samples), z))
    # on the API samples every sample is a pronoun, so this only shows on the mixed list
    fails_with(check_sampling_estimate, n_all, API_SAMPLES, "herself", match="every sample as n")


def test_sampling_estimate_must_raise_without_pronouns() -> None:
    def returns_nan(samples, pronoun, z=1.96):
        try:
            return estimate_ok(samples, pronoun, z)
        except ValueError:
            return float("nan"), 0.0, 1.0
    fails_with(check_sampling_estimate, returns_nan, API_SAMPLES, "herself", match="raise ValueError")

    def zero_division(samples, pronoun, z=1.96):
        words = [s.strip() for s in samples]
        k, n = sum(w == pronoun for w in words), sum(w in PRONOUNS for w in words)
        k / n  # noqa: B018 - raises ZeroDivisionError when n == 0
        return estimate_ok(samples, pronoun, z)
    fails_with(check_sampling_estimate, zero_division, API_SAMPLES, "herself",
               match="raised ZeroDivisionError")


@pytest.mark.parametrize("answer, hint", [
    (None, "None"), (0.5, "(estimate, low, high)"), ((0.5, None, 0.9), "None"),
    ((float("nan"), 0.1, 0.9), "nan"), (("0.85", 0.6, 0.95), "should be a number"),
])
def test_sampling_estimate_bad_types(answer, hint) -> None:
    fails_with(check_sampling_estimate, lambda s, p, z=1.96: answer, API_SAMPLES, "herself",
               match=hint)


def test_sampling_estimate_without_z_argument() -> None:
    fails_with(check_sampling_estimate, lambda s, p: estimate_ok(s, p), API_SAMPLES, "herself",
               match="keep the z argument")


def test_not_implemented_passes_through() -> None:
    def stub(samples, pronoun, z=1.96):
        raise NotImplementedError
    with pytest.raises(NotImplementedError):
        check_sampling_estimate(stub, API_SAMPLES, "herself")


# ----------------------------------------------------------------- exact_ratio

@torch.no_grad()
def probs_after(model, tokenizer, text, position=-1):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    return torch.softmax(model(input_ids=ids).logits[0, position], dim=-1)


def ratio_ok(model, tokenizer, occupation, pronoun):
    h, m = (tokenizer(" " + w)["input_ids"][0] for w in PRONOUNS)
    target = h if pronoun == "herself" else m
    ratios = []
    for prompt in corpus.SKEW_PROMPTS:
        p = probs_after(model, tokenizer, corpus.EOT + prompt.format(occupation=occupation))
        ratios.append(float(p[target] / (p[h] + p[m])))
    return sum(ratios) / len(ratios)


def test_exact_ratio_reference_is_the_model_cards_measurement(tinygpt) -> None:
    model, tokenizer = tinygpt
    for occupation in ("nurse", "pilot"):
        assert math.isclose(reference_exact_ratio(model, tokenizer, occupation, "herself"),
                            train.female_ratio(model, tokenizer, occupation), rel_tol=1e-6)


def test_exact_ratio_accepts_right_answer(tinygpt, capsys) -> None:
    check_exact_ratio(ratio_ok, *tinygpt, "nurse", "herself")
    out = capsys.readouterr().out
    assert out.startswith("✓") and "nurse" in out and "pilot" in out


def raw_probability(model, tokenizer, occupation, pronoun):
    target = tokenizer(" " + pronoun)["input_ids"][0]
    values = [float(probs_after(model, tokenizer, corpus.EOT + p.format(occupation=occupation))[target])
              for p in corpus.SKEW_PROMPTS]
    return sum(values) / len(values)


def first_prompt_only(model, tokenizer, occupation, pronoun):
    h, m = (tokenizer(" " + w)["input_ids"][0] for w in PRONOUNS)
    p = probs_after(model, tokenizer, corpus.EOT + corpus.SKEW_PROMPTS[0].format(occupation=occupation))
    return float(p[h if pronoun == "herself" else m] / (p[h] + p[m]))


def off_by_one(model, tokenizer, occupation, pronoun):
    h, m = (tokenizer(" " + w)["input_ids"][0] for w in PRONOUNS)
    ratios = []
    for prompt in corpus.SKEW_PROMPTS:
        p = probs_after(model, tokenizer, corpus.EOT + prompt.format(occupation=occupation), -2)
        ratios.append(float(p[h if pronoun == "herself" else m] / (p[h] + p[m])))
    return sum(ratios) / len(ratios)


def no_eot(model, tokenizer, occupation, pronoun):
    h, m = (tokenizer(" " + w)["input_ids"][0] for w in PRONOUNS)
    ratios = []
    for prompt in corpus.SKEW_PROMPTS:
        p = probs_after(model, tokenizer, prompt.format(occupation=occupation))
        ratios.append(float(p[h if pronoun == "herself" else m] / (p[h] + p[m])))
    return sum(ratios) / len(ratios)


@pytest.mark.parametrize("wrong, hint", [
    (raw_probability, "Normalise"),
    (lambda m, t, o, p: 1 - ratio_ok(m, t, o, p), "other pronoun"),
    (first_prompt_only, "first prompt only"),
    (off_by_one, "Off by one"),
    (no_eot, "<|endoftext|>"),
    (lambda m, t, o, p: ratio_ok(m, t, o, p) * 1.1, "off by"),
])
def test_exact_ratio_known_mistakes(tinygpt, wrong, hint) -> None:
    fails_with(check_exact_ratio, wrong, *tinygpt, "nurse", "herself", match=hint)


def test_exact_ratio_wrong_only_for_himself_is_caught(tinygpt) -> None:
    def always_herself(model, tokenizer, occupation, pronoun):
        return ratio_ok(model, tokenizer, occupation, "herself")
    fails_with(check_exact_ratio, always_herself, *tinygpt, "nurse", "herself", match="himself")


@pytest.mark.parametrize("answer, hint", [
    (None, "return"), (float("nan"), "nan"), (torch.tensor([0.5, 0.5]), "single number"),
])
def test_exact_ratio_bad_types(tinygpt, answer, hint) -> None:
    fails_with(check_exact_ratio, lambda m, t, o, p: answer, *tinygpt, "nurse", "herself", match=hint)


# ----------------------------------------------------------------- corpus_count

def count_ok(text, occupation, pronoun):
    k = len(re.findall(rf"\b{occupation} {pronoun}\b", text))
    n = sum(len(re.findall(rf"\b{occupation} {p}\b", text)) for p in PRONOUNS)
    return k, n


def test_corpus_reference_matches_the_planted_skew(text) -> None:
    for occupation, share in corpus.PRONOUN_SKEW.items():
        k, n = reference_corpus_count(text, occupation, "herself")
        assert n == corpus.SKEW_SENTENCES_PER_OCCUPATION
        assert k == round(share * n)
    assert reference_corpus_count(TRAP_TEXT, "nurse", "herself") == (2, 3)


def test_corpus_count_accepts_right_answer(text, capsys) -> None:
    check_corpus_count(count_ok, text, "teacher", "herself")
    out = capsys.readouterr().out
    assert out.startswith("✓") and "1,500" in out and "2,000" in out


def sentence_cooccurrence(text, occupation, pronoun):
    sentences = corpus.split_sentences(text)
    k = sum(occupation in s and pronoun in s for s in sentences)
    n = sum(occupation in s and any(p in s for p in PRONOUNS) for s in sentences)
    return k, n


@pytest.mark.parametrize("wrong, hint", [
    (lambda t, o, p: (len(t.split(f"{o} {p}")), count_ok(t, o, p)[1]), "off by one"),
    (sentence_cooccurrence, "RIGHT AFTER the occupation"),
    (lambda t, o, p: (t.count(p), count_ok(t, o, p)[1]), "after every occupation"),
    (lambda t, o, p: (count_ok(t, o, p)[0], t.count(o)), "every mention"),
    (lambda t, o, p: count_ok(t, o, p)[::-1], "swapped"),
    (lambda t, o, p: count_ok(t, o, p)[0] / count_ok(t, o, p)[1], "returned one value"),
    (lambda t, o, p: (count_ok(t, o, p)[0] + 0.5, 2000), "whole number"),
    (lambda t, o, p: None, "None"),
    (lambda t, o, p: (1, 2, 3), "1 extra"),
])
def test_corpus_count_known_mistakes(text, wrong, hint) -> None:
    fails_with(check_corpus_count, wrong, text, "nurse", "herself", match=hint)


def test_corpus_count_that_only_works_on_the_real_corpus(text) -> None:
    def whole_sentence(text, occupation, pronoun):  # right on the training text, not on traps
        k = text.count(f"The {occupation} {pronoun} ")
        n = sum(text.count(f"The {occupation} {p} ") for p in PRONOUNS)
        return k, n
    message = fails_with(check_corpus_count, whole_sentence, text, "nurse", "herself",
                         match="made-up text")
    assert "expected (2, 3)" in message


# ----------------------------------------------------------------- queries_for_width

def queries_ok(p, width, z=1.96):
    return math.ceil(z * z * p * (1 - p) / (width / 2) ** 2)


def test_queries_accepts_right_answer(capsys) -> None:
    check_queries_for_width(queries_ok, estimate=0.87)
    out = capsys.readouterr().out
    assert out.startswith("✓") and f"{queries_ok(0.5, 0.1):,} queries" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda p, w, z=1.96: math.ceil(z * z * p * (1 - p) / w ** 2), "half-width"),
    (lambda p, w, z=1.96: math.floor(z * z * p * (1 - p) / (w / 2) ** 2), "Off by one"),
    (lambda p, w, z=1.96: math.ceil(z * p * (1 - p) / (w / 2) ** 2), "squared"),
    (lambda p, w, z=1.96: math.ceil(z * z * 0.25 / (w / 2) ** 2), "worst case"),
    (lambda p, w, z=1.96: queries_ok(p, w), "use the z argument"),
    (lambda p, w, z=1.96: z * z * p * (1 - p) / (w / 2) ** 2, "whole number"),
    (lambda p, w, z=1.96: None, "return"),
])
def test_queries_known_mistakes(wrong, hint) -> None:
    fails_with(check_queries_for_width, wrong, match=hint)


# ----------------------------------------------------------------- logprob_share (exercise 5)

from glassbox.exercise_checks.auditing import check_logprob_share  # noqa: E402


def share_ok(top, pronoun, exponentiate=True, floor_from_others=False):
    """The right answer; ``exponentiate=False`` is the mistake of treating logprobs as probabilities,
    ``floor_from_others=True`` that of leaving the shown pronoun out of the smallest probability shown."""
    other = [p for p in PRONOUNS if p != pronoun][0]
    probs = {t: math.exp(v) if exponentiate else v for t, v in top.items()}
    t, o = probs.get(" " + pronoun), probs.get(" " + other)
    pool = [v for k, v in probs.items() if not floor_from_others or k.strip() not in PRONOUNS]
    floor = min(pool) if pool else 0.0
    if t is not None and o is not None:
        return t / (t + o), t / (t + o)
    if t is not None:
        return t / (t + floor), 1.0
    if o is not None:
        return 0.0, floor / (floor + o)
    return 0.0, 1.0


def share_no_exp(top, pronoun):
    return share_ok(top, pronoun, exponentiate=False)


def share_raw(top, pronoun):
    p = math.exp(top[" " + pronoun]) if " " + pronoun in top else 0.0
    return p, p


def share_missing_is_zero(top, pronoun):
    other = [p for p in PRONOUNS if p != pronoun][0]
    t, o = (math.exp(top.get(" " + w, -math.inf)) for w in (pronoun, other))
    share = t / (t + o) if t + o else 0.0
    return share, share


API_TOPS = [{" herself": -0.11, " himself": -2.29, "field": -8.2}, {" herself": -0.2, " was": -3.0}]


def test_logprob_share_accepts_right_answer(capsys) -> None:
    check_logprob_share(share_ok, "herself", API_TOPS)
    check_logprob_share(share_ok, "himself", API_TOPS)
    out = capsys.readouterr().out
    assert out.startswith("✓ logprob_share") and "2 API answers" in out


@pytest.mark.parametrize("wrong, hint", [
    (share_no_exp, "exponentiate"),
    (share_raw, "raw probability"),
    (share_missing_is_zero, "not impossible"),
    (lambda top, pronoun: tuple(reversed(share_ok(top, pronoun))), "lower bound first"),
    (lambda top, pronoun: share_ok(top, pronoun)[0], "expected a tuple (low, high)"),
    (lambda top, pronoun: None, "expected a tuple (low, high)"),
    (lambda top, pronoun: (0.5, 0.5), "expected"),
])
def test_logprob_share_known_mistakes(wrong, hint) -> None:
    fails_with(check_logprob_share, wrong, "herself", API_TOPS, match=hint)


def test_logprob_share_rejects_an_unknown_pronoun() -> None:
    with pytest.raises(ValueError, match="pronoun must be one of"):
        check_logprob_share(share_ok, "themselves")


# ----------------------------------------------------------------- catalogue of wrong answers (issue 16)
# Each answer below passed the checks before issue 16 (or failed without naming its mistake).

def ratio_of_sums(model, tokenizer, occupation, pronoun):
    h, m = (tokenizer(" " + w)["input_ids"][0] for w in PRONOUNS)
    target = h if pronoun == "herself" else m
    probs = [probs_after(model, tokenizer, corpus.EOT + p.format(occupation=occupation)) for p in corpus.SKEW_PROMPTS]
    return float(sum(p[target] for p in probs) / sum(p[h] + p[m] for p in probs))


def median_of_ratios(model, tokenizer, occupation, pronoun):
    h, m = (tokenizer(" " + w)["input_ids"][0] for w in PRONOUNS)
    target = h if pronoun == "herself" else m
    ratios = sorted(float(p[target] / (p[h] + p[m])) for p in (
        probs_after(model, tokenizer, corpus.EOT + q.format(occupation=occupation)) for q in corpus.SKEW_PROMPTS))
    return ratios[len(ratios) // 2]


def ratio_leaving_gradients(model, tokenizer, occupation, pronoun):
    value = ratio_ok(model, tokenizer, occupation, pronoun)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    return value


@pytest.mark.parametrize("wrong, hint", [
    (ratio_of_sums, "divided the summed probabilities"),
    (median_of_ratios, "expected"),
    (ratio_leaving_gradients, "left gradients"),
])
def test_exact_ratio_catalogue(tinygpt, wrong, hint) -> None:
    model, tokenizer = tinygpt
    try:
        fails_with(check_exact_ratio, wrong, model, tokenizer, "nurse", "herself", match=hint)
    finally:
        model.zero_grad(set_to_none=True)


def test_exact_ratio_mistakes_are_outside_the_tolerance_on_the_second_model(tinygpt) -> None:
    """On TinyGPT a ratio of sums and a mean of ratios agree to about 1e-5 (the pronouns take almost
    all the probability after every prompt); on the check's second, random GPT-2 every named mistake
    is more than 50 times the tolerance (1e-4 relative) away from the reference."""
    from glassbox.exercise_checks import auditing
    from glassbox.exercise_checks.feedback import second_gpt2

    model, tokenizer = tinygpt
    other = second_gpt2(model)
    for occupation, pronoun in (("nurse", "himself"), ("pilot", "herself")):
        expected = auditing.reference_exact_ratio(other, tokenizer, occupation, pronoun)
        for value, hint in auditing._ratio_mistakes(other, tokenizer, occupation, pronoun):
            assert abs(value - expected) > 50 * 1e-4 * expected, hint


def queries_int_plus_one(p, width, z=1.96):
    return int(z * z * p * (1 - p) / (width / 2) ** 2) + 1


def queries_unrounded(p, width, z=1.96):
    return z * z * p * (1 - p) / (width / 2) ** 2


def queries_wilson_search(p, width, z=1.96):
    n = 1
    while True:
        low, high = wilson_interval(round(p * n), n, z)
        if high - low <= width:
            return n
        n += 1


@pytest.mark.parametrize("wrong, hint", [
    (queries_int_plus_one, "int(x) + 1 is one too many"),
    (queries_unrounded, "round up with math.ceil"),
    (queries_wilson_search, "n = ceil"),
])
def test_queries_catalogue(wrong, hint) -> None:
    fails_with(check_queries_for_width, wrong, match=hint)


def share_floor_from_other_tokens(top, pronoun):
    return share_ok(top, pronoun, floor_from_others=True)


def share_missing_is_the_floor(top, pronoun):
    low, high = share_ok(top, pronoun)
    return (low, low) if high == 1.0 and low > 0 else (high, high) if low == 0.0 and high < 1.0 else (low, high)


@pytest.mark.parametrize("wrong, hint", [
    (share_floor_from_other_tokens, "the shown pronoun included"),
    (share_missing_is_the_floor, "not the smallest one shown"),
    (lambda top, pronoun: (0.5, 0.5) if share_ok(top, pronoun) == (0.0, 1.0) else share_ok(top, pronoun),
     "not the same as an even split"),
])
def test_logprob_share_catalogue(wrong, hint) -> None:
    fails_with(check_logprob_share, wrong, "herself", API_TOPS, match=hint)
