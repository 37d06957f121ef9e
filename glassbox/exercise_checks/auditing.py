"""Checks for chapter 08, "Auditing a model three ways": TinyGPT's planted occupation -> pronoun skew measured
through the API (sampling), from the open weights and from the open training data. References come from the same
samples, the loaded model or the corpus text; each usual mistake from the same inputs with one step changed."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from glassbox.exercise_checks.feedback import (as_number, call_learner, check_number, close_number, expect_raises,
                                               fail, mistakes_from, passed, second_gpt2, unpack_numbers)
from glassbox.exercise_checks.intervals import check_interval, wald_interval, wilson_interval
from glassbox.measure import next_token_probs, pronoun_ids, pronoun_ratio
from glassbox.tinygpt import corpus

__all__ = ["ShareVariant", "check_corpus_count", "check_logprob_share", "check_exact_ratio", "check_queries_for_width",
           "check_sampling_estimate", "reference_corpus_count", "reference_exact_ratio", "reference_logprob_share",
           "wilson_interval"]

PRONOUNS: tuple[str, str] = corpus.PRONOUNS


# --------------------------------------------------------------------------- helpers

def _pronoun_counts(samples: Sequence[str], pronoun: str) -> tuple[int, int]:
    """(samples that are ``pronoun``, samples that are either pronoun), ignoring spaces."""
    words = [str(s).strip() for s in samples]
    return sum(w == pronoun for w in words), sum(w in PRONOUNS for w in words)


def _other(pronoun: str) -> str:
    return PRONOUNS[1] if pronoun == PRONOUNS[0] else PRONOUNS[0]


# --------------------------------------------------------------------------- exercise 1

_SPACE_HINT = ("The API returns tokens with their leading space (' herself'); compare sample.strip() with the pronoun.")


def check_sampling_estimate(sampling_estimate: Callable[..., Any], samples: Sequence[str], pronoun: str) -> None:
    """Check ``sampling_estimate(samples, pronoun, z=1.96) -> (estimate, low, high)`` (a share among the pronoun
    samples and its Wilson interval) on the learner's API samples and made-up lists."""
    made_up = [" herself"] * 30 + [" himself"] * 10 + [" the"] * 5 + ["\n"] * 2
    cases: list[tuple[str, list[str], str, float]] = []
    if _pronoun_counts(samples, pronoun)[1] > 0:
        cases.append(("your samples from the API", list(samples), pronoun, 1.96))
    cases += [
        ("a made-up list with other tokens mixed in", made_up, PRONOUNS[0], 1.96),
        ("the same list, for the other pronoun", made_up, PRONOUNS[1], 1.96),
        ("the same list with z=2.576 (a 99% interval)", made_up, PRONOUNS[0], 2.576),
        ("20 samples that are all the pronoun", [" " + PRONOUNS[1]] * 20, PRONOUNS[1], 1.96),
    ]
    hints = {ZeroDivisionError: "No sample matched: " + _SPACE_HINT,
             ValueError: "These samples do contain the pronouns. " + _SPACE_HINT,
             TypeError: "The check calls sampling_estimate(samples, pronoun, z=...): keep "
                        "the z argument in your function's signature."}
    for label, case_samples, case_pronoun, z in cases:
        k, n = _pronoun_counts(case_samples, case_pronoun)
        expected = k / n
        low_ref, high_ref = wilson_interval(k, n, z)
        got = call_learner(sampling_estimate, case_samples, case_pronoun, z=z, name="sampling_estimate", hints=hints)
        estimate, low, high = unpack_numbers(got, ("estimate", "low", "high"), f"sampling_estimate for {label}")
        where = f"for {label} ({k} of {n} pronoun samples are '{case_pronoun}')"
        check_number(estimate, expected, f"The estimate {where}", rel_tol=1e-6, abs_tol=1e-6, known_mistakes=[
                         (k / len(case_samples), "You divided by every sample. Divide by the samples "
                                                 "that are one of the two pronouns: the skew is "
                                                 "P(pronoun) / (P(herself) + P(himself))."),
                         (1 - expected, f"That is the share of the other pronoun, '{_other(case_pronoun)}'."),
                         (0.0, "No sample matched: " + _SPACE_HINT)],
                     hint="estimate = (samples equal to the pronoun) / (samples equal to either pronoun).")
        if low > high:
            fail(f"Your interval {where} is the wrong way round: low = {low:.4f} is above "
                 f"high = {high:.4f}.", "Return (estimate, low, high) with low <= high: centre - half-width first.")
        if not low - 1e-9 <= estimate <= high + 1e-9:
            fail(f"Your interval [{low:.4f}, {high:.4f}] {where} does not contain the estimate "
                 f"{estimate:.4f}.", "Both ends come from the same centre and half-width; check "
                                     "the signs, and that you used the estimate's k and n.")
        wald = wald_interval(k, n, z)
        check_interval(low, high, (low_ref, high_ref), where, [
            (wald, "That is the normal-approximation (Wald) interval, p ± z·sqrt(p(1-p)/n). Use Wilson's: it stays "
                   "inside [0, 1] and does not collapse to zero width when every sample agrees."),
            ((max(0.0, wald[0]), min(1.0, wald[1])), "That is the Wald interval clipped to [0, 1]. Use Wilson's formula."),
            (wilson_interval(k, len(case_samples), z) if k <= len(case_samples) else (-1, -1),
             "You used every sample as n. Only the samples that are a pronoun count."),
            *([(wilson_interval(k, n, 1.96), f"This is the 95% interval (z=1.96), but z={z} was asked for: use the "
                                             "z argument, do not hard-code 1.96.")] if z != 1.96 else []),
            *[(wilson_interval(k, n, z_other), f"That is a {level} interval (z={z_other}); use z={z}.")
              for z_other, level in ((1.645, "90%"), (2.576, "99%"), (1.0, "68%"), (2.0, "95.4%")) if z_other != z],
        ])
    no_pronoun = [" the", " a", "\n"]
    expect_raises(sampling_estimate, no_pronoun, PRONOUNS[0], exception=ValueError,
                  name=f"sampling_estimate({no_pronoun!r}, ...)",
                  why="When no sample is a pronoun there is nothing to estimate: raise ValueError "
                      "with a message saying so.")
    yours = "your API samples and " if cases[0][0] == "your samples from the API" else ""
    passed(f"sampling_estimate: the right share and Wilson interval for {yours}four made-up "
           "lists, and a ValueError when no sample is a pronoun.")


# --------------------------------------------------------------------------- exercise 2

def reference_exact_ratio(model: Any, tokenizer: Any, occupation: str, pronoun: str) -> float:
    """P(pronoun) / (P(herself) + P(himself)) after <|endoftext|> + each SKEW_PROMPT, averaged
    (``glassbox.measure.pronoun_ratio``, the measurement TinyGPT's training reports)."""
    return pronoun_ratio(model, tokenizer, occupation, pronoun)


def _ratio_mistakes(model: Any, tokenizer: Any, occupation: str, pronoun: str) -> list[tuple[float, str]]:
    female, male = pronoun_ids(tokenizer)
    target = female if pronoun == PRONOUNS[0] else male
    prompts = [p.format(occupation=occupation) for p in corpus.SKEW_PROMPTS]
    with_eot = [next_token_probs(model, tokenizer, p) for p in prompts]
    without_eot = [next_token_probs(model, tokenizer, p, prefix="") for p in prompts]
    shifted = [next_token_probs(model, tokenizer, p, position=-2) for p in prompts]
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([tokenizer(corpus.EOT + p)["input_ids"]])).logits[0, -1].float()
                  for p in prompts]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    def ratio(probs: torch.Tensor) -> float:
        return float(probs[target] / (probs[female] + probs[male]))

    return [
        (mean([float(p[target]) for p in with_eot]),
         f"That is the raw probability P('{pronoun}'), which is tiny when the model also "
         "expects other words. Normalise: P(pronoun) / (P(herself) + P(himself))."),
        (mean([1 - ratio(p) for p in with_eot]), f"That is the share of the other pronoun, '{_other(pronoun)}'."),
        (ratio(with_eot[0]), f"That is the ratio after the first prompt only. Average it over "
                             f"all {len(prompts)} prompts of corpus.SKEW_PROMPTS."),
        (mean([ratio(p) for p in without_eot]),
         "Put corpus.EOT ('<|endoftext|>') before each prompt: every story in the training "
         "text starts after it, and the reference measures the same way."),
        (mean([ratio(p) for p in shifted]),
         "Off by one position: the next-token distribution is at the LAST position, logits[0, -1]."),
        (mean([float(l[target] / (l[female] + l[male])) for l in logits]),
         "Those are raw logits, not probabilities: apply softmax over the vocabulary first."),
        (float(sum(p[target] for p in with_eot) / sum(p[female] + p[male] for p in with_eot)),
         "You divided the summed probabilities. Compute the ratio for each prompt, then average the ratios."),
    ]


def check_exact_ratio(exact_ratio: Callable[..., Any], model: Any, tokenizer: Any,
                      occupation: str, pronoun: str) -> None:
    """Check ``exact_ratio(model, tokenizer, occupation, pronoun) -> float`` (``reference_exact_ratio``) for the
    learner's choice, a second occupation with the other pronoun, and on a second, random GPT-2."""
    second = corpus.OCCUPATIONS[-1] if occupation != corpus.OCCUPATIONS[-1] else corpus.OCCUPATIONS[0]
    # On TinyGPT the two pronouns take almost all the probability after every prompt, so a ratio
    # of sums and a mean of ratios agree to 1e-5: a random GPT-2 tells them (and every other
    # mistake above) apart by more than 1e-2.
    other = second_gpt2(model)
    results = []
    for who, lm, occ, pron in (("", model, occupation, pronoun), ("", model, second, _other(pronoun)),
                               (" on a second, random GPT-2", other, occupation, _other(pronoun))):
        expected = reference_exact_ratio(lm, tokenizer, occ, pron)
        got = call_learner(exact_ratio, lm, tokenizer, occ, pron, name="exact_ratio", model=lm)
        check_number(got, expected, f"exact_ratio(model, tokenizer, {occ!r}, {pron!r}){who}",
                     known_mistakes=lambda: _ratio_mistakes(lm, tokenizer, occ, pron), rel_tol=1e-4, abs_tol=1e-6,
                     hint="For each prompt: probs = softmax(logits[0, -1]) after EOT + prompt; ratio = probs[id] / "
                          "(probs[herself] + probs[himself]). Then average.")
        results.append((occ, pron, expected))
    shown = "; ".join(f"{o} -> {p}: {v:.3f}" for o, p, v in results[:2])
    passed(f"exact_ratio: matches the loaded model's normalised probabilities ({shown}), and a "
           "second, random GPT-2's, on which a ratio of summed probabilities, one prompt alone or "
           "prompts without <|endoftext|> give other numbers.")


# --------------------------------------------------------------------------- exercise 3

TRAP_TEXT: str = (
    "The nurse himself was calm. The pilot herself would find the nurse. "
    "The nurse was busy, so the doctor himself would carry the box." + corpus.EOT
    + "The nurse herself had a red cup. The doctor herself gave the nurse a map. "
    "The doctor herself was tired. The nurse herself"
)
"""A made-up text with traps: an occupation and a pronoun in one sentence but not next to
each other, an occupation without a pronoun, and a match at the very end of the text."""


def reference_corpus_count(text: str, occupation: str, pronoun: str) -> tuple[int, int]:
    """(times the word right after ``occupation`` is ``pronoun``, times it is either pronoun)."""
    k = len(re.findall(rf"\b{re.escape(occupation)} {re.escape(pronoun)}\b", text))
    n = len(re.findall(rf"\b{re.escape(occupation)} (?:{'|'.join(PRONOUNS)})\b", text))
    return k, n


def check_corpus_count(corpus_count: Callable[..., Any], text: str, occupation: str, pronoun: str) -> None:
    """Check ``corpus_count(text, occupation, pronoun) -> (k, n)`` (the word right after the occupation is the
    pronoun; is either pronoun) on the training text and on ``TRAP_TEXT``."""
    cases = [("the training text", text, occupation, pronoun),
             ("a made-up text with traps", TRAP_TEXT, "nurse", PRONOUNS[0]),
             ("the same made-up text", TRAP_TEXT, "doctor", PRONOUNS[1])]
    for label, case_text, occ, pron in cases:
        k_ref, n_ref = reference_corpus_count(case_text, occ, pron)
        got = call_learner(corpus_count, case_text, occ, pron, name="corpus_count")
        call = f"corpus_count(<{label}>, {occ!r}, {pron!r})"
        k, n = map(int, unpack_numbers(got, ("k", "n"), call,
                                       "Return both counts, `return k, n`: the share is k / n, and "
                                       "n tells how much evidence there is.", integer=True,
                                       hint="Return the two counts; the share k / n is computed afterwards."))
        if (k, n) == (k_ref, n_ref):
            continue
        head = f"{call} returned (k, n) = ({k}, {n}); expected ({k_ref}, {n_ref})"
        if (k, n) == (n_ref, k_ref) and k_ref != n_ref:
            fail(f"{head}: the two are swapped.", "Return (k, n): k for the pronoun, n for both.")
        sentences = corpus.split_sentences(case_text)
        same_sentence = sum(1 for s in sentences if re.search(rf"\b{occ}\b", s) and re.search(rf"\b{pron}\b", s))
        if k == len(case_text.split(f"{occ} {pron}")):
            fail(f"{head}: k is off by one.", "text.split(x) gives one more piece than there are "
                                              "x in the text; use text.count(x), or subtract 1.")
        if k != k_ref and k == same_sentence:
            fail(f"{head}: k counts sentences that contain both words anywhere.",
                 "The skew was planted in one slot: the word RIGHT AFTER the occupation. "
                 f"Count '{occ} {pron}' as two adjacent words.")
        if k != k_ref and k == len(re.findall(rf"\b{pron}\b", case_text)):
            fail(f"{head}: k counts the pronoun after every occupation.", f"Count only where it follows '{occ}'.")
        if k == k_ref and n == len(re.findall(rf"\b{occ}\b", case_text)):
            fail(f"{head}: n counts every mention of '{occ}'.",
                 "n should count only the places where a pronoun follows the occupation "
                 f"('{occ} herself' or '{occ} himself'), so that k / n is the pronoun's share.")
        if k == k_ref and n == n_ref + 1:
            fail(f"{head}: n is off by one.", "text.split(x) gives one more piece than there are x in the text.")
        fail(f"{head}.", f"Count the two-word sequences '{occ} {pron}' (k) and '{occ} herself' plus '{occ} himself' "
                         "(n), e.g. with text.count or re.findall(r'\\bnurse herself\\b', text).")
    k, n = reference_corpus_count(text, occupation, pronoun)
    passed(f"corpus_count: ({k:,}, {n:,}) for '{occupation} {pronoun}' in the training text, "
           "and right on a made-up text with traps.")


# --------------------------------------------------------------------------- exercise 4

def _queries(p: float, width: float, z: float = 1.96, *, half: float = 2, round_up: Callable[[float], int] = math.ceil,
             z_power: int = 2, worst_case: bool = False) -> int:
    """The smallest n whose interval p ± width/2 is narrow enough (defaults), or a mistake: one setting changed."""
    return round_up(z ** z_power * (0.25 if worst_case else p * (1 - p)) / (width / half) ** 2)


def _queries_mistakes(z: float) -> list[tuple[dict[str, Any], str]]:
    return [
        (dict(half=1), "You used the full width where the formula needs the half-width: the interval is p ± width/2."),
        (dict(round_up=math.floor), "Off by one: round UP (math.ceil), or the interval is a little wider than asked."),
        (dict(round_up=round), "Round up with math.ceil: round() can go down and give an interval a little wider "
                               "than asked."),
        (dict(round_up=lambda x: int(x) + 1), "int(x) + 1 is one too many when x is already a whole number: use "
                                              "math.ceil(x)."),
        (dict(z_power=1), "z appears squared: n = z² p(1-p) / h²."),
        (dict(worst_case=True), "That is the worst case p = 0.5 (p(1-p) = 0.25). Use the p you are given."),
        (dict(z=1.96), f"z={z} was asked for: use the z argument."),
    ]


def check_queries_for_width(queries_for_width: Callable[..., Any], estimate: float | None = None) -> None:
    """Check ``queries_for_width(p, width, z=1.96) -> int``, n = ceil(z² p (1 - p) / (width / 2)²), also at the
    learner's own estimate."""
    # (0.5, 0.25, 2.0) gives exactly 64 in binary floating point: int(x) + 1 is then one too many.
    cases = [(0.5, 0.1, 1.96), (0.9, 0.05, 1.96), (0.25, 0.02, 1.96), (0.3, 0.1, 2.576), (0.5, 0.25, 2.0)]
    if estimate is not None and 0.0 < float(estimate) < 1.0:
        cases.append((round(float(estimate), 3), 0.04, 1.96))
    for p, width, z in cases:
        got = as_number(call_learner(queries_for_width, p, width, z=z, name="queries_for_width"),
                        f"queries_for_width({p}, {width}, z={z})", integer=True,
                        hint="A number of queries is a whole number: round up with math.ceil(...).")
        check_number(got, _queries(p, width, z), f"queries_for_width({p}, {width}, z={z})", integer=True,
                     known_mistakes=mistakes_from(lambda **s: _queries(p, width, **{"z": z, **s}), _queries_mistakes(z)),
                     hint="n = ceil(z² · p(1-p) / (width/2)²).")
    passed("queries_for_width: " + "; ".join(f"{_queries(p, w, z):,} queries for ±{w / 2:g} at p = {p}"
                                               for p, w, z in cases[:3]) + ".")


# --------------------------------------------------------------- logprob_share (exercise 5)

@dataclass(frozen=True)
class ShareVariant:
    """How to read a pronoun's share off one top-k dict; the defaults are right, each other value is a mistake.
    ``missing``: a pronoun cut off lies between 0 and the smallest probability shown ("bound"), not 0 ("zero") nor
    that smallest one ("floor"); ``floor_from``: that smallest one is over every token shown ("all")."""

    exponentiate: bool = True
    normalise: bool = True
    missing: str = "bound"
    low_first: bool = True
    floor_from: str = "all"


def reference_logprob_share(top_logprobs: dict[str, float], pronoun: str,
                            variant: ShareVariant = ShareVariant()) -> tuple[float, float]:
    """(low, high) for the share of ``pronoun`` between the two pronouns, from one API top-k dict."""
    target, other = " " + pronoun, " " + _other(pronoun)
    value = (math.exp if variant.exponentiate else float)
    shown = {token: value(lp) for token, lp in top_logprobs.items()}
    if not shown:
        low, high = 0.0, 1.0
    else:
        pool = [v for t, v in shown.items() if variant.floor_from == "all" or t not in (target, other)]
        floor = (min(pool) if pool else 0.0) if variant.missing != "zero" else 0.0
        if target in shown and other in shown:
            p_t, p_o = shown[target], shown[other]
            low = high = p_t / (p_t + p_o) if variant.normalise else p_t
        elif target in shown:
            p_t = shown[target]
            low = (p_t / (p_t + floor) if variant.normalise else p_t)
            high = 1.0 if variant.missing == "bound" else low
        elif other in shown:
            p_o = shown[other]
            high = floor / (floor + p_o) if variant.normalise and floor + p_o else 0.0
            low = high if variant.missing == "floor" else 0.0
            if variant.missing == "zero":
                high = low
        else:
            low, high = (0.0, 1.0) if variant.missing == "bound" else (0.0, 0.0)
    return (low, high) if variant.low_first else (high, low)


_SHARE_MISTAKES: list[tuple[ShareVariant, str]] = [
    (ShareVariant(exponentiate=False),
     "These are log-probabilities: exponentiate them (math.exp) before dividing one by the sum."),
    (ShareVariant(normalise=False),
     "That is the raw probability of the pronoun. The share is P(pronoun) / (P(herself) + P(himself))."),
    (ShareVariant(missing="zero"),
     "A pronoun missing from the top k is not impossible: its probability is somewhere between 0 and "
     "the smallest probability shown, so the share is only bounded: (low, high)."),
    (ShareVariant(missing="floor"),
     "A missing pronoun's probability is not the smallest one shown: it can be anything from 0 up "
     "to it, so the share is a range. Work it out at both ends."),
    (ShareVariant(floor_from="others"),
     "The smallest probability shown is over every token in the dict, the shown pronoun included: "
     "a missing token is less likely than every token shown."),
    (ShareVariant(low_first=False), "Return (low, high), the lower bound first."),
]


def _share_cases(pronoun: str, api_tops: Sequence[dict[str, float]]) -> list[tuple[str, dict[str, float]]]:
    """Real API answers first, then made-up ones covering both, one and none of the pronouns shown."""
    target, other = " " + pronoun, " " + _other(pronoun)
    cases = [(f"the API's top-k for skew prompt {i + 1}", dict(top)) for i, top in enumerate(api_tops)]
    cases += [
        ("both pronouns shown", {target: math.log(0.6), other: math.log(0.2), " was": math.log(0.1)}),
        (f"{other.strip()!r} cut off by the top k", {target: math.log(0.7), " was": math.log(0.2),
                                                     " had": math.log(0.04)}),
        (f"{pronoun!r} cut off by the top k", {other: math.log(0.5), " the": math.log(0.3), " a": math.log(0.02)}),
        (f"{other.strip()!r} cut off, {pronoun!r} the least likely token shown",
         {" was": math.log(0.5), " had": math.log(0.3), target: math.log(0.1)}),
        ("neither pronoun shown", {" the": math.log(0.5), " a": math.log(0.3)}),
    ]
    return cases


def check_logprob_share(logprob_share: Callable[..., Any], pronoun: str,
                        api_tops: Sequence[dict[str, float]] = ()) -> None:
    """Check ``logprob_share(top_logprobs, pronoun) -> (low, high)`` on the learner's own API answers
    and on made-up top-k dicts where one or both pronouns were cut off."""
    if pronoun not in PRONOUNS:
        raise ValueError(f"pronoun must be one of {PRONOUNS}, got {pronoun!r}")
    exact_cases = 0
    for label, top in _share_cases(pronoun, api_tops):
        expected = reference_logprob_share(top, pronoun)
        got = unpack_numbers(call_learner(logprob_share, dict(top), pronoun, name="logprob_share"), ("low", "high"),
                             f"logprob_share for {label}",
                             "Return both bounds, even when they are equal: `return share, share`.")
        if all(close_number(g, e) for g, e in zip(got, expected)):
            exact_cases += expected[0] == expected[1]
            continue
        if tuple(got) == (0.5, 0.5) and expected == (0.0, 1.0):
            fail(f"For {label}, logprob_share returned (0.5, 0.5); expected (0, 1).",
                 "With neither pronoun shown nothing is known about the share: it can be anything "
                 "from 0 to 1, which is not the same as an even split.")
        for variant, hint in _SHARE_MISTAKES:
            wrong = reference_logprob_share(top, pronoun, variant)
            if wrong != expected and all(close_number(g, w) for g, w in zip(got, wrong)):
                fail(f"For {label}, logprob_share returned ({got[0]:.4g}, {got[1]:.4g}); "
                     f"expected ({expected[0]:.4g}, {expected[1]:.4g}).", hint)
        fail(f"For {label}, logprob_share returned ({got[0]:.4g}, {got[1]:.4g}); "
             f"expected ({expected[0]:.4g}, {expected[1]:.4g}).",
             "Both shown: share = P(t) / (P(t) + P(o)), returned twice. One missing: its probability "
             "lies between 0 and the smallest one shown; work out the share at both ends.")
    passed(f"logprob_share: exact where both pronouns are in the top k ({exact_cases} cases, your "
           f"{len(api_tops)} API answers included), bounded where one was cut off.")
