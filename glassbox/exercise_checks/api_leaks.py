"""Checks for chapter 07, "What leaks through the API": each reference is computed from the loaded model or
from data built with a fixed seed, and each usual mistake from the same reference with one step changed. The
references are public, for the tests and the chapter's attack test."""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from glassbox.exercise_checks.feedback import as_number, call_learner, check_number, check_type, fail, passed, second_gpt2
from glassbox.measure import sentence_loss

__all__ = ["check_auc", "check_estimate_hidden_size", "check_logit_differences", "check_zlib_ratio", "reference_auc",
           "reference_hidden_size", "reference_logit_differences", "reference_zlib_ratio"]

#: Largest logit matrix (rows x columns) the checks build; above it, a random subset of
#: columns is kept (any m > h columns of a rank-h matrix have rank h).
_MAX_MATRIX_ENTRIES = 20_000_000


# --------------------------------------------------------------------------- references

def reference_hidden_size(vectors: torch.Tensor) -> int:
    """The hidden size h of an (n, m) matrix of logits or log-probabilities (n, m > h): with the first column
    subtracted (log-prob differences are logit differences), the i >= 2 with the largest lambda_i / lambda_(i+1)
    (lambda_1 / lambda_2 measures the average row all prompts share, not h)."""
    matrix = vectors.detach().to(torch.float64)
    s = torch.linalg.svdvals(matrix - matrix[:, :1]).clamp_min(torch.finfo(torch.float64).tiny)
    if s.numel() < 4:
        raise ValueError(f"Need at least 4 rows and columns to find a drop, got {tuple(vectors.shape)}.")
    ratios = s[1:-1] / s[2:]  # ratios[j] = lambda_(j+2) / lambda_(j+3), 1-based
    return int(ratios.argmax()) + 2


def reference_logit_differences(top_logprobs: Mapping[str, float], logit_bias: Mapping[int, float],
                                token_ids: Mapping[str, int], reference_id: int) -> dict[int, float]:
    """``logit(t) - logit(reference)`` for every biased token ``t`` in the top k: under a bias b,
    log p(t) = logit(t) + b(t) - log Z, so (log p(t) - b(t)) - (log p(ref) - b(ref)) is that difference."""
    unbiased = {token_ids[s]: lp - logit_bias[token_ids[s]] for s, lp in top_logprobs.items()
                if s in token_ids and token_ids[s] in logit_bias}
    if reference_id not in unbiased:
        raise ValueError("the reference token is not among the top log-probabilities")
    ref = unbiased[reference_id]
    return {t: v - ref for t, v in unbiased.items()}


def reference_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties counted half (average ranks)."""
    members = [float(x) for x in member_scores]
    others = [float(x) for x in nonmember_scores]
    n1, n0 = len(members), len(others)
    if n1 == 0 or n0 == 0:
        raise ValueError("need at least one member and one non-member score")
    pooled = sorted(members + others)
    counts, first_rank = Counter(pooled), {}
    for rank, value in enumerate(pooled, start=1):
        first_rank.setdefault(value, rank)
    rank_sum = sum(first_rank[v] + (counts[v] - 1) / 2 for v in members)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)


def reference_zlib_ratio(model: nn.Module, tokenizer: Any, text: str) -> float:
    """The model's mean loss on ``text`` (nats per token) over its zlib-compressed length (bytes)."""
    return sentence_loss(model, tokenizer, text, prefix="") / len(zlib.compress(text.encode("utf-8")))


# --------------------------------------------------------------------------- exercise 1

def _low_rank_matrix(n: int, m: int, rank: int, *, row_offsets: bool, seed: int) -> torch.Tensor:
    """An (n, m) matrix like stacked log-probs: a large shared row, ``rank - 1`` varying directions and noise;
    with ``row_offsets`` each row also gets its own constant, as log-probabilities do (their log-normaliser)."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64
    scales = torch.logspace(0, -1, rank - 1, dtype=dtype)
    varying = (torch.randn(n, rank - 1, generator=g, dtype=dtype) * scales) @ \
        torch.randn(rank - 1, m, generator=g, dtype=dtype)
    shared = 100.0 * torch.randn(1, m, generator=g, dtype=dtype)
    matrix = varying + shared + 0.01 * torch.randn(n, m, generator=g, dtype=dtype)
    if row_offsets:
        matrix = matrix + 5.0 * torch.randn(n, 1, generator=g, dtype=dtype)
    return matrix.to(torch.float32)


def _model_logprobs(model: nn.Module, n: int, seed: int) -> torch.Tensor:
    """Log-probabilities of the next token after n random prompts (a random column subset if large)."""
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(vocab, (n, 4), generator=g)
    columns = None
    if n * vocab > _MAX_MATRIX_ENTRIES:
        columns = torch.randperm(vocab, generator=g)[: 2 * model.config.n_embd]
    rows = []
    with torch.no_grad():
        for start in range(0, n, 64):
            logits = model(prompts[start:start + 64], logits_to_keep=1).logits[:, -1]
            logprobs = logits.float().log_softmax(-1)
            rows.append(logprobs if columns is None else logprobs[:, columns])
    return torch.cat(rows)


def _estimate(estimate_hidden_size: Callable[[torch.Tensor], Any], matrix: torch.Tensor, what: str) -> int:
    """The learner's estimate for ``matrix`` as an int (the matrix must come back unchanged)."""
    got = call_learner(estimate_hidden_size, matrix, name="estimate_hidden_size", protect={"matrix": matrix},
                       hints={IndexError: "Take every size from the matrix you are given "
                                          "(logprobs.shape), never from the loaded model."})
    if isinstance(got, torch.Tensor) and got.numel() != 1:
        fail(f"estimate_hidden_size on {what} should be one whole number, got a tensor of shape "
             f"{tuple(got.shape)}.", "Return the estimate of h, not the singular values or the ratios.")
    return int(as_number(got, f"estimate_hidden_size on {what}", integer=True,
                         hint="Return one whole number, the estimate of h: int(...) of the index you found."))


def check_estimate_hidden_size(estimate_hidden_size: Callable[[torch.Tensor], Any], model: nn.Module) -> None:
    """Check ``estimate_hidden_size(logprobs) -> int`` on matrices of known rank and on two models' log-probs
    (where ``n_embd`` or ``n_embd - 1`` is accepted: a LayerNorm with zero bias removes one direction)."""
    n, m, rank = 40, 300, 13
    plain = _low_rank_matrix(n, m, rank, row_offsets=False, seed=7)
    shifted = _low_rank_matrix(n, m, rank, row_offsets=True, seed=7)
    got_plain = _estimate(estimate_hidden_size, plain, f"a {n} x {m} matrix of rank {rank}")
    got_shifted = _estimate(estimate_hidden_size, shifted, "the same matrix with a constant added to each row")
    head = f"On a {n} x {m} matrix of rank {rank} (built by the check)"
    skip_hint = ("The first singular value is large because every row shares a big common part "
                 "(the average row, like the average logits of all prompts): lambda_1/lambda_2 "
                 "says nothing about h. Look for the largest ratio from lambda_2/lambda_3 on.")
    if got_plain == 1 or got_shifted == 1:
        fail(f"{head}, your estimate is 1.", skip_hint)
    if got_plain == 0:
        fail(f"{head}, your estimate is 0.", "The largest singular value always comes first: look at the ratios "
             "lambda_i / lambda_(i+1) of neighbours, not at the singular values themselves.")
    if got_plain == rank - 1:
        fail(f"{head}, you estimated {got_plain}: off by one.",
             "argmax gives a 0-based index. If the largest ratio is s[i] / s[i+1] (0-based), "
             "then the values s[0] ... s[i] are above the drop: that is i + 1 of them.")
    if got_plain == rank + 1:
        fail(f"{head}, you estimated {got_plain}: off by one.",
             "The count of singular values above the drop is the index of the last large one "
             "plus one (0-based), not plus two.")
    if got_plain >= min(n, m) - 1:
        fail(f"{head}, you estimated {got_plain}, about the number of rows ({n}).",
             "In floating point no singular value is exactly zero, so counting non-zero values "
             "gives the matrix's size. Find the drop: the largest ratio of neighbours.")
    if got_plain != rank:
        fail(f"{head}, you estimated {got_plain}, expected {rank}.",
             "Compute torch.linalg.svdvals of the matrix, then the ratios s[:-1] / s[1:], skipping the first one.")
    if got_shifted == rank + 1:
        fail(f"With a constant added to each row (as log-probabilities have: minus the log of "
             f"the normaliser), you estimated {got_shifted}, expected {rank}.",
             "That constant adds one direction that has nothing to do with h. Subtract it first: subtract the first "
             "column from every column (log-prob differences are logit differences), or each row's mean.")
    if got_shifted != rank:
        fail(f"With a constant added to each row, you estimated {got_shifted}, expected {rank}.",
             "Subtract the first column from every column before the SVD.")
    second = second_gpt2(model)
    found = []
    for who, lm in (("the loaded model", model), ("a second, random GPT-2", second)):
        h = int(lm.config.n_embd)
        logprobs = _model_logprobs(lm, h + 16, seed=0)
        got_model = _estimate(estimate_hidden_size, logprobs, f"{who}'s log-probabilities")
        if got_model not in {h, h - 1} and got_model != reference_hidden_size(logprobs):  # SVD only if needed
            fail(f"On {who}'s log-probabilities for {h + 16} random prompts (shape {tuple(logprobs.shape)}), you "
                 f"estimated {got_model}; its config says n_embd = {h}, and {h} or {h - 1} is accepted.",
                 "Your function was right on the synthetic matrices: check that it uses the whole "
                 "matrix it is given (no fixed sizes inside).")
        found.append((got_model, h))
    passed(f"estimate_hidden_size: exact on two synthetic matrices of rank {rank}; {found[0][0]} on "
           f"the loaded model, whose config says n_embd = {found[0][1]}; and {found[1][0]} on a "
           f"second, random GPT-2 with n_embd = {found[1][1]}.")


# --------------------------------------------------------------------------- exercise 2

def _word_tokens(tokenizer: Any, count: int, seed: int, model: nn.Module) -> list[int]:
    """``count`` token ids whose decoded strings are ' ' + letters, distinct from one another, and whose
    rows of the model's output layer differ, so that their logits differ (TinyGPT gives every token its
    text never uses one shared row: two of those would always score the same)."""
    rows = model.get_output_embeddings().weight.detach()
    chosen: dict[str, int] = {}
    for token in torch.randperm(len(tokenizer), generator=torch.Generator().manual_seed(seed)).tolist():
        text = tokenizer.decode([token])
        if text.startswith(" ") and text[1:].isalpha() and text.isascii() and text not in chosen \
                and not any(torch.equal(rows[token], rows[other]) for other in chosen.values()):
            chosen[text] = token
            if len(chosen) == count:
                return list(chosen.values())
    raise RuntimeError("not enough word tokens with distinct output rows in the vocabulary")


def _biased_top_k(model: nn.Module, tokenizer: Any, prompt: str, logit_bias: dict[int, float],
                  k: int = 5) -> tuple[dict[str, float], torch.Tensor]:
    """What a pre-2024 API returned: the top-k log-probabilities computed with the bias applied."""
    ids = torch.tensor([tokenizer(prompt).input_ids])
    with torch.no_grad():
        logits = model(ids, logits_to_keep=1).logits[0, -1].float()
    bias = torch.zeros_like(logits)
    bias[list(logit_bias)] = torch.tensor(list(logit_bias.values()))
    top = (logits + bias).log_softmax(-1).topk(k)
    return {tokenizer.decode([t]): float(v) for v, t in zip(top.values, top.indices.tolist())}, logits


def check_logit_differences(logit_differences: Callable[..., Any], model: nn.Module, tokenizer: Any) -> None:
    """Check ``logit_differences(top_logprobs, logit_bias, token_ids, reference_id) -> dict`` on top-5 answers
    built from the loaded model as a pre-2024 API returned them (the bias applied), to 1e-3."""
    tokens = _word_tokens(tokenizer, 14, seed=3, model=model)
    # The last case's biases are set from the model's own logits, so that after the bias tokens[1] is
    # the most likely and the reference tokens[2] neither the first biased nor the most likely, whatever
    # the model: 100, 95, 90 and 85 above the largest of the four logits, in that order.
    last_prompt, last = "The teacher said that", [tokens[1], tokens[3], tokens[2], tokens[0]]
    _, last_logits = _biased_top_k(model, tokenizer, last_prompt, {})
    top_logit = float(last_logits[last].max())
    last_bias = {t: 100.0 - 5.0 * last.index(t) + top_logit - float(last_logits[t]) for t in tokens[:4]}
    cases = [
        ("a different bias on each of 5 tokens", "The teacher said that",
         {tokens[0]: 100.0, tokens[1]: 95.0, tokens[2]: 90.0, tokens[3]: 85.0, tokens[4]: 80.0}),
        ("6 biased tokens, so one of them misses the top 5", "Once upon a time, the",
         {tokens[5]: 100.0, **{t: 60.0 for t in tokens[6:11]}}),
        ("3 biased tokens, so the top 5 also holds 2 unbiased ones", "The farmer went to the",
         {tokens[11]: 100.0, tokens[12]: 90.0, tokens[13]: 80.0}),
        ("the reference is the third biased token, neither the first nor the most likely", last_prompt, last_bias),
    ]
    name = "logit_differences"
    for index, (label, prompt, bias) in enumerate(cases):
        reference_id = list(bias)[2 if index == len(cases) - 1 else 0]
        token_ids = {tokenizer.decode([t]): t for t in bias}
        top, logits = _biased_top_k(model, tokenizer, prompt, bias)
        got = call_learner(logit_differences, dict(top), dict(bias), dict(token_ids), reference_id, name=name)
        check_type(got, dict, f"{name} ({label})", hint="Return a dict {token id: logit(token) - logit(reference)}.")
        shown = [t for s, t in token_ids.items() if s in top]
        expected = {t: float(logits[t] - logits[reference_id]) for t in shown}
        try:
            got = {int(k): v for k, v in got.items()}
        except (TypeError, ValueError):
            fail(f"{name} ({label}): the keys should be token ids (ints), got "
                 f"{list(got)[:3]!r}.", "Map each string back to its id with token_ids[string].")
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        if extra:
            unbiased = [t for t in extra if t not in bias]
            if unbiased:
                fail(f"{name} ({label}): your dict has token ids {unbiased}, which were not biased.",
                     "Skip the strings of top_logprobs that are not keys of token_ids: without a "
                     "known bias their logprob tells you nothing you can subtract.")
            fail(f"{name} ({label}): your dict has token ids {extra}, which were biased but are not "
                 "in the top 5, so their logit cannot be known from this response.",
                 "Only tokens whose string appears in top_logprobs can be used; leave the others out.")
        if missing:
            hint = ("The reference itself belongs in the dict too: its difference is 0."
                    if missing == [reference_id] else
                    "Go through every string in top_logprobs that is a key of token_ids.")
            fail(f"{name} ({label}): token ids {missing} are missing from your dict.", hint)
        ref_lp = top[tokenizer.decode([reference_id])]
        values = {t: as_number(got[t], f"{name} ({label})[{t}]") for t in expected}
        if all(math.isclose(values[t], expected[t], abs_tol=1e-3) for t in expected):
            continue
        top_id = token_ids[max((s for s in top if s in token_ids), key=top.get)]
        first_id = next(iter(bias))
        returned = {t: top[tokenizer.decode([t])] for t in expected}
        mistakes = [
            ({t: expected[t] + bias[t] - bias[reference_id] for t in expected},
             "Subtract each token's own bias before taking the difference: the returned logprob is logit + bias - "
             "log Z. (With equal biases it cancels, which is why this case gives each token a different one.)"),
            (returned, "These are the log-probabilities as returned. Subtract each token's bias, then the reference's "
                    "(logit - bias) value: differences cancel log Z."),
            ({t: returned[t] - bias[t] for t in expected},
             "You subtracted the bias but not the reference: logit + (-log Z) still contains the normaliser. "
             "Subtract the reference token's value too."),
            ({t: -expected[t] for t in expected}, "The sign is reversed: return logit(token) - logit(reference)."),
            ({t: expected[t] + 2 * (bias[t] - bias[reference_id]) for t in expected},
             "You added the bias instead of subtracting it."),
            ({t: returned[t] - ref_lp for t in expected},
             "Logprob differences are logit differences only once each token's bias is removed: subtract "
             "logit_bias[token] from each logprob first."),
            ({t: expected[t] - expected[top_id] for t in expected},
             "You took the most likely token as the reference. Subtract the value of reference_id, the token you "
             "are given, whichever its rank."),
            ({t: expected[t] - expected.get(first_id, 0.0) for t in expected},
             "You took the first biased token as the reference. Subtract the value of reference_id, the token you "
             "are given."),
        ]
        for wrong, hint in mistakes:
            if any(not math.isclose(wrong[t], expected[t], abs_tol=1e-3) for t in expected) and \
                    all(math.isclose(values[t], wrong[t], abs_tol=1e-3) for t in expected):
                fail(f"{name} ({label}): the keys are right, the values are not.", hint)
        bad = next(t for t in expected if not math.isclose(values[t], expected[t], abs_tol=1e-3))
        fail(f"{name} ({label}): for token {bad} ({tokenizer.decode([bad])!r}) expected "
             f"{expected[bad]:.4f}, got {values[bad]!r}.",
             "logit(t) - logit(ref) = (logprob(t) - bias(t)) - (logprob(ref) - bias(ref)).")
    passed("logit_differences: the model's true logit differences, recovered from top-5 "
           f"log-probabilities under {len(cases)} different biases, one of them with a reference "
           "token that is neither the first biased nor the most likely.")


# --------------------------------------------------------------------------- exercise 3

def check_auc(auc: Callable[[Sequence[float], Sequence[float]], Any]) -> None:
    """Check ``auc(member_scores, nonmember_scores) -> float`` against the rank-sum formula on four cases."""
    g = torch.Generator().manual_seed(11)
    cases = [("60 members and 45 non-members, no ties", (torch.randn(60, generator=g) + 0.8).tolist(),
              torch.randn(45, generator=g).tolist()),
             ("scores with many ties (whole numbers 0 to 6)",
              torch.randint(0, 6, (30,), generator=g).float().add(1.0).tolist(),
              torch.randint(0, 6, (50,), generator=g).float().tolist()),
             ("every member scores higher", [5.0, 6.0, 7.5], [1.0, 2.0, 3.0, 4.0]),
             ("every non-member scores higher", [0.1, 0.2], [0.3, 0.4, 0.5])]
    for label, members, others in cases:
        expected = reference_auc(members, others)
        a, b = Counter(members), Counter(others)
        tied = sum(a[v] * b[v] for v in a) / (len(members) * len(others))  # share of tied pairs
        got = call_learner(auc, list(members), list(others), name="auc")
        if isinstance(got, (tuple, list)):
            fail(f"auc ({label}) returned a {type(got).__name__} of length {len(got)}, expected one "
                 "number.", "Return only the area, a float between 0 and 1.")
        mistakes = [(1 - expected, "This is 1 - AUC: higher scores should mean 'member'. Count the "
                                   "pairs where the member's score is higher."),
                    (expected - tied / 2, "Ties count one half: a tied pair is a coin toss. You "
                                          "counted tied pairs as 0."),
                    (expected + tied / 2, "Ties count one half, not 1: you counted '>=' as a win.")]
        check_number(got, expected, f"auc ({label})",
                     known_mistakes=[(v, h) for v, h in mistakes if not math.isclose(v, expected)],
                     abs_tol=1e-6, rel_tol=0.0,
                     hint="AUC = (number of (member, non-member) pairs where the member scores "
                          "higher + half the tied pairs) / (n_members x n_nonmembers).")
    passed("auc: equal to the rank-sum (Mann-Whitney) formula on four cases, ties included.")


# --------------------------------------------------------------------------- exercise 4

def check_zlib_ratio(zlib_ratio: Callable[[nn.Module, Any, str], Any], model: nn.Module, tokenizer: Any) -> None:
    """Check ``zlib_ratio(model, tokenizer, text) -> float`` (mean loss in nats over the zlib-compressed bytes)."""
    name = "zlib_ratio"
    from glassbox.tinygpt.corpus import heldout_sentences, member_sentences

    for text in member_sentences()[:2] + heldout_sentences()[:2] + ["The cat sat on the mat. " * 3]:
        loss, n_tokens = sentence_loss(model, tokenizer, text, prefix=""), len(tokenizer(text).input_ids)
        compressed = len(zlib.compress(text.encode("utf-8")))
        expected = loss / compressed
        mistakes = [
            (math.exp(loss) / compressed, "You divided the perplexity exp(loss); use the loss itself "
                                          "(the log of the perplexity)."),
            (loss * (n_tokens - 1) / compressed, "You used the summed loss over the text; use the mean "
                                                 "per token, as model(ids, labels=ids).loss gives."),
            (loss / len(text), "You divided by the text's length in characters; divide by the length "
                               "of zlib.compress(text.encode()) in bytes."),
            (compressed / loss, "The ratio is upside down: loss / compressed length."),
            (loss / math.log(2) / compressed, "You used bits (log base 2); keep the model's loss in "
                                              "nats, as it comes."),
            (sentence_loss(model, tokenizer, text) / compressed,
             "You put <|endoftext|> before the text: score the text exactly as it is, "
             "model(ids, labels=ids) on its own tokens."),
        ]
        if len(text.encode("utf-8")) != len(text):
            mistakes.append((loss / len(text.encode("utf-8")), "You divided by the raw length in "
                                                               "bytes; compress it first."))
        got = call_learner(zlib_ratio, model, tokenizer, text, name=name, model=model,
                           hints={TypeError: "zlib.compress needs bytes: text.encode('utf-8')."})
        check_number(got, expected, f"{name} for {text[:40]!r}", known_mistakes=mistakes, rel_tol=1e-4,
                     hint="loss = model(ids, labels=ids).loss; divide by len(zlib.compress(text.encode('utf-8'))).")
    passed("zlib_ratio: the model's loss over the zlib-compressed length, right for member, "
           "held-out and repetitive text.")
