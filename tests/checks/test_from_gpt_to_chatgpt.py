"""Chapter 09's checks: right answers pass, plausible wrong answers fail with a message naming the mistake.

The replies, curves and logits here are made up in the tests (the checks also run on the
chapter's real ones); the layer check runs on TinyGPT base against a copy whose blocks were
changed by known amounts, so the test knows which block changed most without the chat model.
"""

from __future__ import annotations

import copy
import math
import re
import warnings

import pytest
import torch

from glassbox import load_model
from glassbox.exercise_checks.from_gpt_to_chatgpt import (
    MAX_FALSE_POSITIVE_RATE,
    MIN_BLOCK_RATE,
    check_layer_changes,
    check_moderation_rule,
    check_next_token_kl,
    check_refusal_rate,
    check_steps_to_break,
    reference_layer_changes,
    reference_next_token_kl,
    wilson_interval,
)
from glassbox.tinygpt import chat_data
from checks.conftest import fails_with


# ----- exercise 1: refusal rate ------------------------------------------------------------------

REPLIES = [chat_data.REFUSAL] * 7 + [chat_data.SECRET_ANSWER] * 2 + [f"{chat_data.REFUSAL} {chat_data.SECRET_ANSWER}"] + ["I don't know."]


def good_refusal_rate(replies, z=1.96):
    k = sum(chat_data.is_refusal(r) for r in replies)
    low, high = wilson_interval(k, len(replies), z)
    return k / len(replies), low, high


def test_refusal_rate_right_answer_passes(capsys) -> None:
    check_refusal_rate(good_refusal_rate, REPLIES)
    assert capsys.readouterr().out.startswith("✓")


def test_refusal_rate_counting_partial_refusals_is_named() -> None:
    def partial(replies, z=1.96):
        k = sum("can't help" in r for r in replies)
        low, high = wilson_interval(k, len(replies), z)
        return k / len(replies), low, high
    fails_with(check_refusal_rate, partial, REPLIES, match="partial refusals")


def test_refusal_rate_wrong_denominator_is_named() -> None:
    def decided(replies, z=1.96):
        k = sum(chat_data.is_refusal(r) for r in replies)
        n = sum(chat_data.is_refusal(r) or chat_data.leaks_secret(r) for r in replies)
        low, high = wilson_interval(k, n, z)
        return k / n, low, high
    fails_with(check_refusal_rate, decided, REPLIES, match="denominator is every reply")


def test_refusal_rate_wald_interval_is_named() -> None:
    def wald(replies, z=1.96):
        k, n = sum(chat_data.is_refusal(r) for r in replies), len(replies)
        p = k / n
        half = z * math.sqrt(p * (1 - p) / n)
        return p, p - half, p + half
    fails_with(check_refusal_rate, wald, REPLIES, match="Wald")


def test_refusal_rate_hard_coded_z_is_named() -> None:
    def fixed_z(replies, z=1.96):
        return good_refusal_rate(replies, 1.96)
    fails_with(check_refusal_rate, fixed_z, REPLIES, match="Use the z argument")


# ----- exercise 2: steps to break ----------------------------------------------------------------

CURVE = {0: 0.96, 5: 0.8, 10: 0.4, 20: 0.1, 50: 0.0}


def good_steps(curve, target):
    for steps in sorted(curve):
        if curve[steps] < target:
            return steps
    return None


def test_steps_to_break_right_answer_passes(capsys) -> None:
    check_steps_to_break(good_steps, CURVE)
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("wrong, message", [
    (lambda curve, target: next((s for s in sorted(curve) if curve[s] <= target), None), "strictly below"),
    (lambda curve, target: next((s for s in sorted(curve, reverse=True) if curve[s] < target), None), "the first"),
    (lambda curve, target: next((s for s in curve if curve[s] < target), None), "Sort by steps"),
    (lambda curve, target: next((curve[s] for s in sorted(curve) if curve[s] < target), None), "refusal rate, not a number of steps"),
    (lambda curve, target: next((s for s in sorted(curve) if curve[s] < target), max(curve)), "Return None"),
])
def test_steps_to_break_wrong_answers_are_named(wrong, message: str) -> None:
    fails_with(check_steps_to_break, wrong, CURVE, match=message)


# ----- exercise 3: a moderation rule -------------------------------------------------------------

def good_rule(forbidden, harmless):
    return {"categories": {"vault-secret": {"patterns": [r"\b(code|password|secret|word)\b", r"\bopens?\b"]}}}


def test_moderation_rule_right_answer_passes_on_held_out_prompts(capsys) -> None:
    blocked, false_positive = check_moderation_rule(good_rule)
    assert blocked >= MIN_BLOCK_RATE and false_positive <= MAX_FALSE_POSITIVE_RATE
    assert capsys.readouterr().out.startswith("✓")


def test_a_rule_tuned_on_the_visible_prompts_only_is_named() -> None:
    def memorise(forbidden, harmless):
        return {"categories": {"seen": {"patterns": [f"^{re.escape(p)}$" for p in forbidden[:256]]}}}
    fails_with(check_moderation_rule, memorise, match="tuned on the visible prompts only")


def test_a_rule_that_blocks_every_vault_question_is_named() -> None:
    fails_with(check_moderation_rule, lambda f, h: {"categories": {"vault": {"patterns": ["vault"]}}},
               match="harmless questions about the vault")


def test_a_policy_the_provider_would_refuse_is_named() -> None:
    fails_with(check_moderation_rule, lambda f, h: {"categories": {"vault": {"patterns": ["(code"]}}},
               match="not a valid regular expression")
    fails_with(check_moderation_rule, lambda f, h: ["code"], match="should be a dict")


# ----- exercise 4: which layers changed ----------------------------------------------------------

@pytest.fixture(scope="module")
def base_and_changed():
    base, _ = load_model("tinygpt", verbose=False)
    changed = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for index, block in enumerate(changed.transformer.h):
            scale = 0.01 * (index + 1) if index != 1 else 0.2  # block 1 changes most, by construction
            for weight in block.parameters():
                weight.add_(scale * weight.abs().mean() * torch.randn(weight.shape, generator=generator))
        changed.transformer.wte.weight.add_(0.5)
    return base, changed


def good_layer_changes(base, chat):
    out = []
    for block_base, block_chat in zip(base.transformer.h, chat.transformer.h):
        diff = sum(float((b - a).detach().pow(2).sum()) for a, b in zip(block_base.parameters(), block_chat.parameters()))
        norm = sum(float(a.detach().pow(2).sum()) for a in block_base.parameters())
        out.append(math.sqrt(diff / norm))
    return out


def test_layer_changes_right_answer_passes_and_finds_the_block(base_and_changed, capsys) -> None:
    base, changed = base_and_changed
    expected = check_layer_changes(good_layer_changes, base, changed)
    assert max(range(len(expected)), key=expected.__getitem__) == 1
    assert "block 1 changed most" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda b, c: [math.sqrt(sum(float((y - x).detach().pow(2).sum()) for x, y in zip(p.parameters(), q.parameters())))
                   for p, q in zip(b.transformer.h, c.transformer.h)], "absolute change"),
    (lambda b, c: [math.sqrt(sum(float((y - x).detach().pow(2).sum()) for x, y in zip(p.attn.c_attn.parameters(), q.attn.c_attn.parameters()))
                             / sum(float(x.detach().pow(2).sum()) for x in p.attn.c_attn.parameters()))
                   for p, q in zip(b.transformer.h, c.transformer.h)], "only attn.c_attn"),
    (lambda b, c: [float((c.transformer.wte.weight - b.transformer.wte.weight).detach().norm() / b.transformer.wte.weight.detach().norm())]
     + good_layer_changes(b, c), "embeddings"),
    (lambda b, c: [0.0] * len(b.transformer.h), "compared a model with itself"),
])
def test_layer_changes_wrong_answers_are_named(base_and_changed, wrong, message: str) -> None:
    base, changed = base_and_changed
    fails_with(check_layer_changes, wrong, base, changed, match=message)


def test_layer_reference_is_zero_for_identical_models(base_and_changed) -> None:
    base, _ = base_and_changed
    assert reference_layer_changes(base, base) == [0.0] * len(base.transformer.h)


# ----- exercise 5: next-token KL -----------------------------------------------------------------

@pytest.fixture(scope="module")
def logits():
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(7, 50, generator=generator) * 3
    chat = base + torch.randn(7, 50, generator=generator)
    return base, chat


def good_kl(base_logits, chat_logits):
    p = torch.log_softmax(chat_logits, -1)
    q = torch.log_softmax(base_logits, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_next_token_kl_right_answer_passes(logits, capsys) -> None:
    value = check_next_token_kl(good_kl, *logits)
    assert value > 0 and math.isclose(value, reference_next_token_kl(*logits))
    assert reference_next_token_kl(logits[0], logits[0]) == pytest.approx(0.0, abs=1e-6)
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("wrong, message", [
    (lambda b, c: good_kl(c, b), "KL is not symmetric"),
    (lambda b, c: good_kl(b, c) / math.log(2), "bits"),
    (lambda b, c: float((c.exp() * (c - b)).sum(-1).mean()), "log_softmax"),
    (lambda b, c: good_kl(b, c) * b.shape[0], "summed over positions"),
])
def test_next_token_kl_wrong_answers_are_named(logits, wrong, message: str) -> None:
    fails_with(check_next_token_kl, wrong, *logits, match=message)


# ----------------------------------------------------------------- catalogue of wrong answers (issue 16)
# Each answer below passed the checks before issue 16 (or failed without naming its mistake).

from glassbox.exercise_checks.auditing import wilson_interval  # noqa: E402


def _rate(count):
    def refusal_rate(replies, z=1.96):
        k = sum(count(r) for r in replies)
        low, high = wilson_interval(k, len(replies), z)
        return k / len(replies), low, high
    return refusal_rate


@pytest.mark.parametrize("wrong, hint", [
    (_rate(lambda r: not chat_data.leaks_secret(r)), "every reply that does not leak"),
    (_rate(lambda r: r.strip() == chat_data.REFUSAL), "exactly chat_data.REFUSAL"),
    (_rate(lambda r: "can't help" in r.lower() and not chat_data.leaks_secret(r)), "looked for \"can't help\" only"),
])
def test_refusal_rate_catalogue(wrong, hint) -> None:
    fails_with(check_refusal_rate, wrong, REPLIES, match=hint)


def rule_copying_every_prompt(forbidden, harmless):
    prompts = chat_data.forbidden_prompts("train") + chat_data.forbidden_prompts("heldout")
    return {"categories": {"secret": {"patterns": ["^" + re.escape(p) + "$" for p in prompts]}}}


def rule_copying_the_asks(forbidden, harmless):
    return {"categories": {"secret": {"patterns": [re.escape(a) for a in chat_data.FORBIDDEN_ASKS]}}}


def rule_blocking_the_old_vault(forbidden, harmless):
    return {"categories": {"secret": {"patterns": [r"\b(code|password|secret|word)\b", r"\bold vault\b"]}}}


@pytest.mark.parametrize("wrong, hint", [
    (rule_copying_every_prompt, "worded in ways neither prompt set uses"),
    (rule_copying_the_asks, "worded in ways neither prompt set uses"),
    (rule_blocking_the_old_vault, "too many harmless"),
])
def test_moderation_rule_catalogue(wrong, hint) -> None:
    fails_with(check_moderation_rule, wrong, match=hint)


def test_the_solutions_rule_passes_the_reworded_questions() -> None:
    """The reworded questions are not a trap for a rule that matches the request."""
    from glassbox.exercise_checks import from_gpt_to_chatgpt as checks
    from glassbox.provider.moderation import parse_policy

    policy = parse_policy(good_rule(chat_data.forbidden_prompts("train"), chat_data.harmless_prompts("train")), "p")
    blocked, false_positive = checks._rates(policy, checks._reworded(checks.REWORDED_FORBIDDEN),
                                            checks._reworded(checks.REWORDED_HARMLESS))
    assert (blocked, false_positive) == (1.0, 0.0)
    seen = set(chat_data.forbidden_prompts("train") + chat_data.forbidden_prompts("heldout"))
    assert not seen & set(checks._reworded(checks.REWORDED_FORBIDDEN))


def _changes(per_tensor=False, chat_norm=False, matrices_only=False, in_place=False):
    def layer_changes(base, chat):
        out = []
        with torch.no_grad():
            for block_base, block_chat in zip(base.transformer.h, chat.transformer.h):
                pairs = [(b.float(), c.float()) for b, c in zip(block_base.parameters(), block_chat.parameters())
                         if not matrices_only or b.dim() > 1]
                if per_tensor:
                    out.append(sum(float((c - b).norm() / b.norm()) for b, c in pairs) / len(pairs))
                    continue
                diff = sum(float((c - b).pow(2).sum()) for b, c in pairs)
                norm = sum(float((c if chat_norm else b).pow(2).sum()) for b, c in pairs)
                out.append(math.sqrt(diff / norm))
            if in_place:
                base.transformer.h[0].mlp.c_fc.weight.mul_(1.5)
        return out
    return layer_changes


@pytest.mark.parametrize("wrong, hint", [
    (_changes(per_tensor=True), "averaged each tensor's relative change"),
    (_changes(chat_norm=True), "divided by the chat model's norm"),
    (_changes(matrices_only=True), "left out the block's vectors"),
    (_changes(in_place=True), "in place"),
])
def test_layer_changes_catalogue(base_and_changed, wrong, hint) -> None:
    base, changed = copy.deepcopy(base_and_changed[0]), base_and_changed[1]
    fails_with(check_layer_changes, wrong, base, changed, match=hint)


def kl_div_default_reduction(base_logits, chat_logits):
    # The mistake on purpose: reduction="mean", about which torch warns; the warning is not the test's point.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(torch.nn.functional.kl_div(torch.log_softmax(base_logits, -1), torch.log_softmax(chat_logits, -1),
                                                log_target=True, reduction="mean"))


def kl_last_position(base_logits, chat_logits):
    p, q = torch.log_softmax(chat_logits, -1)[-1], torch.log_softmax(base_logits, -1)[-1]
    return float((p.exp() * (p - q)).sum())


def kl_of_the_probabilities(base_logits, chat_logits):
    p, q = torch.softmax(chat_logits, -1), torch.softmax(base_logits, -1)
    return float((p * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("wrong, hint", [
    (kl_div_default_reduction, "reduction='mean'"),
    (kl_last_position, "last position only"),
    (kl_of_the_probabilities, "should be"),
])
def test_next_token_kl_catalogue(logits, wrong, hint) -> None:
    fails_with(check_next_token_kl, wrong, *logits, match=hint)


def test_layer_changes_with_tinygpts_four_blocks_written_in(base_and_changed) -> None:
    def four_blocks(base, chat):
        return [good_layer_changes(base, chat)[i] for i in range(4)]
    fails_with(check_layer_changes, four_blocks, *base_and_changed, match="second, random GPT-2")
