"""Chapter 07's checks: right answers pass, plausible wrong answers fail with their hint.

Each test calls a check directly with a deliberately wrong answer and asserts on the
message a learner would see. The references are also tested against independent
computations (a brute-force pairwise AUC, the rank of matrices built with a known rank),
so a check can never pass a wrong answer because its reference is wrong too.

The checks are model-agnostic; a small random GPT-2 with GPT-2's real tokenizer (built
here in a second) exercises them, and TinyGPT where the lesson's claims need a trained model.
"""

from __future__ import annotations

import math
import random
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2LMHeadModel

from glassbox.exercise_checks.feedback import ExerciseFailed
from glassbox.exercise_checks.api_leaks import (
    _low_rank_matrix,
    check_auc,
    check_estimate_hidden_size,
    check_logit_differences,
    check_zlib_ratio,
    reference_auc,
    reference_hidden_size,
    reference_logit_differences,
)
from checks.conftest import fails_with, random_gpt2


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    """A small random GPT-2 (d = 24) with GPT-2's full vocabulary, and a non-zero final LayerNorm bias."""
    model = random_gpt2(n_embd=24, std=None)
    with torch.no_grad():
        model.transformer.ln_f.bias.normal_(0.0, 0.5)
    return model


# ----------------------------------------------------------------- the references themselves

@pytest.mark.parametrize("rank", [3, 13, 30])
@pytest.mark.parametrize("row_offsets", [False, True])
def test_reference_hidden_size_finds_a_built_in_rank(rank, row_offsets) -> None:
    matrix = _low_rank_matrix(40, 300, rank, row_offsets=row_offsets, seed=rank).double()
    # Independent count: singular values above the noise (0.01 per entry: at most about
    # 0.01 * (sqrt(40) + sqrt(300)) = 0.24), the smallest built-in direction being about 10.
    assert torch.linalg.matrix_rank(matrix - matrix[:, :1], atol=1.0, rtol=0.0) == rank
    assert reference_hidden_size(matrix) == rank


def test_reference_hidden_size_on_model_logprobs(model) -> None:
    """The softmax bottleneck: n > d prompts give d or d - 1 directions (FACTS: LayerNorm)."""
    d = model.config.n_embd
    prompts = torch.randint(model.config.vocab_size, (d + 16, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logprobs = model(prompts, logits_to_keep=1).logits[:, -1].log_softmax(-1)
    assert reference_hidden_size(logprobs) in {d, d - 1}


def brute_force_auc(members, others) -> float:
    """P(member > non-member) + 0.5 P(tie), by looking at every pair."""
    wins = sum(1.0 if m > o else 0.5 if m == o else 0.0 for m in members for o in others)
    return wins / (len(members) * len(others))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=30),
       st.lists(st.integers(-5, 5), min_size=1, max_size=30))
def test_reference_auc_equals_pairwise_count(members, others) -> None:
    assert math.isclose(reference_auc(members, others), brute_force_auc(members, others), abs_tol=1e-12)


def test_reference_auc_extremes() -> None:
    assert reference_auc([3, 4], [1, 2]) == 1.0
    assert reference_auc([1, 2], [3, 4]) == 0.0
    assert reference_auc([1, 1], [1, 1, 1]) == 0.5


def test_reference_logit_differences_cancel_the_normaliser() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -4.0, 1.0])
    bias = {1: 100.0, 2: 90.0, 4: 80.0}
    logprobs = (logits + torch.tensor([bias.get(i, 0.0) for i in range(6)])).log_softmax(-1)
    top = {f"t{i}": float(logprobs[i]) for i in logprobs.topk(5).indices.tolist()}
    token_ids = {f"t{i}": i for i in bias}
    got = reference_logit_differences(top, bias, token_ids, reference_id=1)
    assert got.keys() == {1, 2, 4}
    for t in got:
        assert math.isclose(got[t], float(logits[t] - logits[1]), abs_tol=1e-4)


# ----------------------------------------------------------------- estimate_hidden_size

def estimate_ok(logprobs: torch.Tensor) -> int:
    x = logprobs.double()
    s = torch.linalg.svdvals(x - x[:, :1])
    return int((s[1:-1] / s[2:]).argmax()) + 2


def test_estimate_hidden_size_accepts_right_answer(model, capsys) -> None:
    check_estimate_hidden_size(estimate_ok, model)
    out = capsys.readouterr().out
    assert out.startswith("✓") and out.count("\n") == 1
    assert f"n_embd = {model.config.n_embd}" in out


def test_estimate_hidden_size_accepts_row_mean_centring(model) -> None:
    def centred(logprobs):
        x = logprobs.double()
        s = torch.linalg.svdvals(x - x.mean(dim=1, keepdim=True))
        return int((s[1:-1] / s[2:]).argmax()) + 2
    check_estimate_hidden_size(centred, model)


def _ratios(logprobs, centre=True):
    x = logprobs.double()
    if centre:
        x = x - x[:, :1]
    s = torch.linalg.svdvals(x)
    return s[:-1] / s[1:]


@pytest.mark.parametrize("wrong, hint", [
    (lambda lp: int(_ratios(lp)[1:].argmax()) + 1, "0-based index"),
    (lambda lp: int(_ratios(lp)[1:].argmax()) + 3, "off by one"),
    (lambda lp: int(_ratios(lp).argmax()) + 1, "lambda_1/lambda_2 says nothing about h"),
    (lambda lp: int(torch.linalg.svdvals(lp.double()).argmax()), "ratios"),
    (lambda lp: int((torch.linalg.svdvals(lp.double()) > 0).sum()), "no singular value is exactly zero"),
    (lambda lp: int(_ratios(lp, centre=False)[1:].argmax()) + 2, "normaliser"),
])
def test_estimate_hidden_size_known_mistakes(model, wrong, hint) -> None:
    fails_with(check_estimate_hidden_size, wrong, model, match=hint)


@pytest.mark.parametrize("answer, hint", [
    (None, "return"), (float("nan"), "is nan"), ("64", "got the text '64'"),
    (12.5, "whole number"), ([13], "got list"), (torch.arange(3), "tensor of shape (3,)"),
])
def test_estimate_hidden_size_bad_types(model, answer, hint) -> None:
    fails_with(check_estimate_hidden_size, lambda lp: answer, model, match=hint)


def test_estimate_hidden_size_fixed_answer_fails_on_the_model(model) -> None:
    """A function tuned to the synthetic matrices (always 13) is caught on the model's logprobs."""
    fails_with(check_estimate_hidden_size, lambda lp: 13 if lp.shape[0] == 40 else 7, model,
               match="n_embd = 24")


def test_estimate_hidden_size_accepts_tensor_and_numpy_answers(model) -> None:
    import numpy as np
    check_estimate_hidden_size(lambda lp: torch.tensor(estimate_ok(lp)), model)
    check_estimate_hidden_size(lambda lp: np.int64(estimate_ok(lp)), model)


def test_estimate_hidden_size_learner_crash_becomes_feedback(model) -> None:
    def crashes(lp):
        return torch.linalg.svdvals(lp)[100]  # IndexError on the 40-row matrix
    with pytest.raises(ExerciseFailed) as info:
        check_estimate_hidden_size(crashes, model)
    assert "estimate_hidden_size raised IndexError" in str(info.value)


# ----------------------------------------------------------------- logit_differences

def differences_ok(top_logprobs, logit_bias, token_ids, reference_id):
    unbiased = {token_ids[s]: lp - logit_bias[token_ids[s]] for s, lp in top_logprobs.items()
                if s in token_ids}
    return {t: v - unbiased[reference_id] for t, v in unbiased.items()}


def test_logit_differences_accepts_right_answer(model, tokenizer, capsys) -> None:
    check_logit_differences(differences_ok, model, tokenizer)
    assert capsys.readouterr().out.startswith("✓")


def test_logit_differences_accepts_the_reference(model, tokenizer) -> None:
    check_logit_differences(reference_logit_differences, model, tokenizer)


def forgot_bias(top, bias, ids, ref):
    used = {ids[s]: lp for s, lp in top.items() if s in ids}
    return {t: v - used[ref] for t, v in used.items()}


def sign_reversed(top, bias, ids, ref):
    return {t: -v for t, v in differences_ok(top, bias, ids, ref).items()}


def no_reference(top, bias, ids, ref):
    return {ids[s]: lp - bias[ids[s]] for s, lp in top.items() if s in ids}


def added_bias(top, bias, ids, ref):
    used = {ids[s]: lp + bias[ids[s]] for s, lp in top.items() if s in ids}
    return {t: v - used[ref] for t, v in used.items()}


def keeps_unbiased(top, bias, ids, ref):
    out = differences_ok(top, bias, ids, ref)
    for s in top:
        if s not in ids:
            out[12345] = 0.0
    return out


def includes_missing(top, bias, ids, ref):
    out = differences_ok(top, bias, ids, ref)
    for t in bias:
        out.setdefault(t, 0.0)
    return out


def drops_reference(top, bias, ids, ref):
    out = differences_ok(top, bias, ids, ref)
    del out[ref]
    return out


def keyed_by_string(top, bias, ids, ref):
    inverse = {t: s for s, t in ids.items()}
    return {inverse[t]: v for t, v in differences_ok(top, bias, ids, ref).items()}


def crashes_on_unbiased(top, bias, ids, ref):
    unbiased = {ids[s]: lp - bias[ids[s]] for s, lp in top.items()}  # KeyError: an unbiased string
    return {t: v - unbiased[ref] for t, v in unbiased.items()}


@pytest.mark.parametrize("wrong, hint", [
    (forgot_bias, "Subtract each token's own bias"),
    (sign_reversed, "sign is reversed"),
    (no_reference, "Subtract the reference token's value"),
    (added_bias, "added the bias instead of subtracting"),
    (keeps_unbiased, "not biased"),
    (includes_missing, "not in the top 5"),
    (drops_reference, "reference itself belongs in the dict"),
    (keyed_by_string, "token ids (ints)"),
    (crashes_on_unbiased, "raised KeyError"),
    (lambda *a: None, "None"),
    (lambda *a: [1.0, 2.0], "should be a dict"),
])
def test_logit_differences_known_mistakes(model, tokenizer, wrong, hint) -> None:
    fails_with(check_logit_differences, wrong, model, tokenizer, match=hint)


def test_logit_differences_slightly_wrong_value_names_the_token(model, tokenizer) -> None:
    def off(top, bias, ids, ref):
        out = differences_ok(top, bias, ids, ref)
        key = next(t for t in out if t != ref)
        out[key] += 0.5
        return out
    fails_with(check_logit_differences, off, model, tokenizer, match="expected")


# ----------------------------------------------------------------- auc

def auc_pairs(members, others) -> float:
    return brute_force_auc(members, others)


def auc_trapezoid(members, others) -> float:
    """The ROC curve swept threshold by threshold, area by trapezoids (ties included)."""
    thresholds = sorted(set(members) | set(others), reverse=True)
    points = [(0.0, 0.0)]
    for t in thresholds:
        points.append((sum(o >= t for o in others) / len(others), sum(m >= t for m in members) / len(members)))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))


@pytest.mark.parametrize("right", [auc_pairs, auc_trapezoid])
def test_auc_accepts_right_answers(right, capsys) -> None:
    check_auc(right)
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("wrong, hint", [
    (lambda m, o: 1 - brute_force_auc(m, o), "1 - AUC"),
    (lambda m, o: sum(x > y for x in m for y in o) / (len(m) * len(o)), "counted tied pairs as 0"),
    (lambda m, o: sum(x >= y for x in m for y in o) / (len(m) * len(o)), "'>=' as a win"),
    (lambda m, o: sum(x > y for x in m for y in o), "AUC = "),
    (lambda m, o: (0.0, 1.0), "Return only the area"),
    (lambda m, o: None, "return"),
    (lambda m, o: float("nan"), "nan"),
])
def test_auc_known_mistakes(wrong, hint) -> None:
    fails_with(check_auc, wrong, match=hint)


def test_auc_accepts_a_tensor_answer() -> None:
    check_auc(lambda m, o: torch.tensor(brute_force_auc(m, o)))


# ----------------------------------------------------------------- zlib_ratio

def zlib_ok(model, tokenizer, text) -> float:
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    return float(loss) / len(zlib.compress(text.encode("utf-8")))


def zlib_by_hand(model, tokenizer, text) -> float:
    """The same ratio with the loss computed by hand from log-softmax (an independent route)."""
    ids = tokenizer(text).input_ids
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    nll = -sum(float(logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1)) / (len(ids) - 1)
    return nll / len(zlib.compress(text.encode("utf-8")))


@pytest.mark.parametrize("right", [zlib_ok, zlib_by_hand])
def test_zlib_ratio_accepts_right_answers(model, tokenizer, right, capsys) -> None:
    check_zlib_ratio(right, model, tokenizer)
    assert capsys.readouterr().out.startswith("✓")


def _loss(model, tokenizer, text):
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        return float(model(ids, labels=ids).loss), ids.shape[1]


@pytest.mark.parametrize("wrong, hint", [
    (lambda m, t, s: math.exp(_loss(m, t, s)[0]) / len(zlib.compress(s.encode())), "perplexity"),
    (lambda m, t, s: _loss(m, t, s)[0] * (_loss(m, t, s)[1] - 1) / len(zlib.compress(s.encode())),
     "summed loss"),
    (lambda m, t, s: _loss(m, t, s)[0] / len(s), "characters"),
    (lambda m, t, s: len(zlib.compress(s.encode())) / _loss(m, t, s)[0], "upside down"),
    (lambda m, t, s: _loss(m, t, s)[0] / math.log(2) / len(zlib.compress(s.encode())), "nats"),
    (lambda m, t, s: _loss(m, t, s)[0] / (8 * len(zlib.compress(s.encode()))), "factor of 1/8"),
    (lambda m, t, s: _loss(m, t, s)[0] / len(zlib.compress(s)), "text.encode"),
    (lambda m, t, s: None, "return"),
])
def test_zlib_ratio_known_mistakes(model, tokenizer, wrong, hint) -> None:
    fails_with(check_zlib_ratio, wrong, model, tokenizer, match=hint)


def test_not_implemented_passes_through(model, tokenizer) -> None:
    def stub(*args):
        raise NotImplementedError("todo")
    for check, args in [(check_estimate_hidden_size, (model,)), (check_logit_differences, (model, tokenizer)),
                        (check_auc, ()), (check_zlib_ratio, (model, tokenizer))]:
        with pytest.raises(NotImplementedError):
            check(stub, *args)


def test_checks_do_not_depend_on_global_random_state(model) -> None:
    """The checks seed their own generators: the learner's torch.manual_seed cannot change a verdict."""
    random.seed(123)
    torch.manual_seed(123)
    check_estimate_hidden_size(estimate_ok, model)


# ----------------------------------------------------------------- catalogue of wrong answers (issue 16)
# Each answer below passed the checks before issue 16 (or failed without naming its mistake).

from glassbox.tinygpt import corpus  # noqa: E402

def estimate_with_tinygpts_width_written_in(logprobs):
    return 64 if logprobs.shape[0] > 60 else estimate_ok(logprobs)


def estimate_from_the_top_left_corner(logprobs):
    return estimate_ok(logprobs[:80, :80])


def estimate_in_place(logprobs):
    logprobs -= logprobs[:, :1].clone()
    return estimate_ok(logprobs)


@pytest.mark.parametrize("wrong, hint", [
    (estimate_with_tinygpts_width_written_in, "second, random GPT-2"),
    (estimate_from_the_top_left_corner, "no fixed sizes inside"),
    (estimate_in_place, "changed its matrix in place"),
])
def test_estimate_hidden_size_catalogue(tinygpt, wrong, hint) -> None:
    model, _ = tinygpt
    fails_with(check_estimate_hidden_size, wrong, model, match=hint)


def differences_from_the_top_token(top, bias, ids, ref):
    unbiased = {ids[s]: lp - bias[ids[s]] for s, lp in top.items() if s in ids}
    best = ids[max((s for s in top if s in ids), key=top.get)]
    return {t: v - unbiased[best] for t, v in unbiased.items()}


def differences_from_the_first_biased_token(top, bias, ids, ref):
    unbiased = {ids[s]: lp - bias[ids[s]] for s, lp in top.items() if s in ids}
    first = next(iter(bias))
    return {t: v - unbiased[first] for t, v in unbiased.items()} if first in unbiased else unbiased


def differences_with_the_references_bias_for_all(top, bias, ids, ref):
    unbiased = {ids[s]: lp - bias[ref] for s, lp in top.items() if s in ids}
    return {t: v - unbiased[ref] for t, v in unbiased.items()}


@pytest.mark.parametrize("wrong, hint", [
    (differences_from_the_top_token, "most likely token as the reference"),
    (differences_from_the_first_biased_token, "first biased token as the reference"),
    (differences_with_the_references_bias_for_all, "own bias"),
])
def test_logit_differences_catalogue(tinygpt, wrong, hint) -> None:
    model, tokenizer = tinygpt
    fails_with(check_logit_differences, wrong, model, tokenizer, match=hint)


def zlib_in_training_mode(model, tokenizer, text):
    model.train()
    return zlib_ok(model, tokenizer, text)


def zlib_leaving_gradients(model, tokenizer, text):
    ids = torch.tensor([tokenizer(text).input_ids])
    loss = model(ids, labels=ids).loss
    loss.backward()
    return float(loss) / len(zlib.compress(text.encode("utf-8")))


def zlib_after_endoftext(model, tokenizer, text):
    return zlib_ok(model, tokenizer, corpus.EOT + text) * len(zlib.compress((corpus.EOT + text).encode())) \
        / len(zlib.compress(text.encode()))


@pytest.mark.parametrize("wrong, hint", [
    (zlib_in_training_mode, "training mode"),
    (zlib_leaving_gradients, "left gradients"),
    (zlib_after_endoftext, "<|endoftext|> before the text"),
])
def test_zlib_ratio_catalogue(tinygpt, wrong, hint) -> None:
    model, tokenizer = tinygpt
    try:
        fails_with(check_zlib_ratio, wrong, model, tokenizer, match=hint)
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
