"""Chapter 05's checks: right answers pass, plausible wrong answers fail with their hint.

The checks are model-agnostic, so a small random GPT-2 with GPT-2's vocabulary (built
here in well under a second) exercises them as well as TinyGPT does. Each test calls a
check function directly with a deliberately wrong answer and asserts on the message the
learner would see. The last tests regenerate chapter 05's fine-tuning text from its
recipe, so data/balanced_pronouns.txt provably comes from where data/README.md says.
"""

from __future__ import annotations

import copy
import functools
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2LMHeadModel

from glassbox.exercise_checks import changing_the_model as changing
from glassbox.exercise_checks.changing_the_model import (
    check_ablate_heads,
    check_heldout_loss,
    check_quantize_rows,
    check_suppress_tokens,
    check_training_step,
    heldout_windows,
)
from glassbox.exercise_checks.feedback import ExerciseFailed
from glassbox.paths import DATA_DIR
from glassbox.tinygpt import corpus
from checks.conftest import fails_with, passes, random_gpt2


@pytest.fixture
def model() -> GPT2LMHeadModel:
    # Larger weights than a fresh GPT-2's, so that every head changes the loss measurably.
    return random_gpt2(matrices_only=True)


@pytest.fixture
def small_vocab_model() -> GPT2LMHeadModel:
    """The same with 2,000 tokens: an ablation runs the model once per head, and the output layer
    over 50,257 tokens is most of its cost (the check takes the ids modulo the vocabulary)."""
    return random_gpt2(matrices_only=True, vocab_size=2_000)


# ----------------------------------------------------------------- right answers

def loss_ok(model, input_ids, vocab=None):
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    vocab = vocab or logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), input_ids[:, 1:].reshape(-1)).item()


def ablate_ok(model, input_ids):
    """Weight-zeroing version of the ablation loop."""
    n_layer, n_head = model.config.n_layer, model.config.n_head
    d_head = model.config.n_embd // n_head
    baseline = loss_ok(model, input_ids)
    deltas = torch.zeros(n_layer, n_head)
    for layer in range(n_layer):
        c_proj = model.transformer.h[layer].attn.c_proj
        for head in range(n_head):
            rows = slice(head * d_head, (head + 1) * d_head)
            saved = c_proj.weight[rows].detach().clone()
            with torch.no_grad():
                c_proj.weight[rows] = 0.0
            deltas[layer, head] = loss_ok(model, input_ids) - baseline
            with torch.no_grad():
                c_proj.weight[rows] = saved
    return deltas


def ablate_with_hooks(model, input_ids, remove=True):
    n_layer, n_head = model.config.n_layer, model.config.n_head
    d_head = model.config.n_embd // n_head
    baseline = loss_ok(model, input_ids)
    deltas = torch.zeros(n_layer, n_head)
    for layer in range(n_layer):
        for head in range(n_head):
            def hook(module, args, cols=slice(head * d_head, (head + 1) * d_head)):
                hidden = args[0].clone()
                hidden[..., cols] = 0
                return (hidden,)
            handle = model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(hook)
            deltas[layer, head] = loss_ok(model, input_ids) - baseline
            if remove:
                handle.remove()
    return deltas


def suppress_ok(model, token_ids, vocab=None):
    edited = copy.deepcopy(model)
    bias = torch.zeros(vocab or edited.config.vocab_size)
    bias[token_ids] = float("-inf")
    edited.lm_head.bias = nn.Parameter(bias, requires_grad=False)
    return edited


def step_ok(model, optimizer, input_ids, vocab=None):
    optimizer.zero_grad()
    logits = model(input_ids=input_ids).logits
    vocab = vocab or logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), input_ids[:, 1:].reshape(-1))
    loss.backward()
    optimizer.step()
    return loss.item()


def quantize_ok(weight):
    scale = weight.abs().amax(dim=1) / 127
    q = torch.round(weight / scale.clamp(min=1e-12)[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


# ----------------------------------------------------------------- heldout_windows

def test_heldout_windows_are_validation_text(tokenizer) -> None:
    windows = heldout_windows(tokenizer, 3, 20, offset=5)
    assert windows.shape == (3, 20) and windows.dtype == torch.long
    ids = tokenizer(corpus.validation_text()[:4000], verbose=False)["input_ids"]
    assert windows.flatten().tolist() == ids[5:65]


def test_heldout_windows_too_many(tokenizer) -> None:
    with pytest.raises(ValueError, match="tokens"):
        heldout_windows(tokenizer, 1000, 64)


# ----------------------------------------------------------------- heldout_loss

def test_heldout_loss_accepts_right_answer(model, tokenizer, capsys) -> None:
    out = passes(check_heldout_loss, loss_ok, model, tokenizer, capsys=capsys)
    assert "copy of the loaded model" in out


def test_heldout_loss_accepts_a_tensor_and_labels_shortcut(model, tokenizer, capsys) -> None:
    def with_labels(m, ids):
        return m(input_ids=ids, labels=ids).loss  # a 0-d tensor that needs grad
    passes(check_heldout_loss, with_labels, model, tokenizer, capsys=capsys)


def test_heldout_loss_on_a_large_model_uses_a_stand_in(model, tokenizer, capsys,
                                                        monkeypatch) -> None:
    monkeypatch.setattr(changing, "COPY_LIMIT", 1000)
    out = passes(check_heldout_loss, loss_ok, model, tokenizer, capsys=capsys)
    assert "small random GPT-2 built for the check" in out


def _loss_variant(shift=1, reduce="mean", base=None):
    def fn(model, ids):
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        t, vocab = ids.shape[1], logits.shape[-1]
        loss = F.cross_entropy(logits[:, : t - shift].reshape(-1, vocab), ids[:, shift:].reshape(-1),
                               reduction=reduce)
        if base == 2:
            loss = loss / torch.log(torch.tensor(2.0))
        if base == "exp":
            loss = loss.exp()
        return loss.item()
    return fn


@pytest.mark.parametrize("wrong, hint", [
    (_loss_variant(shift=0), "No shift"),
    (_loss_variant(shift=2), "shifted twice"),
    (_loss_variant(base=2), "bits"),
    (_loss_variant(base="exp"), "perplexity"),
    (_loss_variant(reduce="sum"), "sum over all predicted tokens"),
])
def test_heldout_loss_known_mistakes(model, tokenizer, wrong, hint) -> None:
    fails_with(check_heldout_loss, wrong, model, tokenizer, match=hint)


def test_heldout_loss_double_shift_with_labels(model, tokenizer) -> None:
    def shifted_and_labels(m, ids):
        return m(input_ids=ids[:, :-1], labels=ids[:, 1:]).loss.item()
    fails_with(check_heldout_loss, shifted_and_labels, model, tokenizer, match="shifted twice")


@pytest.mark.parametrize("answer, hint", [
    (None, "return"), (float("nan"), "nan"), ("1.2", "should be a number"),
    (torch.ones(3), "single number"),
])
def test_heldout_loss_bad_types(model, tokenizer, answer, hint) -> None:
    fails_with(check_heldout_loss, lambda m, ids: answer, model, tokenizer, match=hint)


def test_heldout_loss_that_changes_the_model(model, tokenizer) -> None:
    def trains_while_measuring(m, ids):
        loss = loss_ok(m, ids)
        with torch.no_grad():
            m.transformer.ln_f.weight.mul_(1.01)
        return loss
    message = fails_with(check_heldout_loss, trains_while_measuring, model, tokenizer,
                         match="changed 1 of the model's weight tensors in place")
    assert "ln_f" in message


def test_heldout_loss_using_the_global_model(model, tokenizer) -> None:
    def uses_global(m, ids):
        with torch.no_grad():
            model.transformer.wte.weight[0] += 1.0
        return loss_ok(m, ids)
    fails_with(check_heldout_loss, uses_global, model, tokenizer, match="notebook's own `model`")


def test_heldout_loss_crash_and_stub(model, tokenizer) -> None:
    def crashes(m, ids):
        return m(ids).logitz
    with pytest.raises(ExerciseFailed) as info:
        check_heldout_loss(crashes, model, tokenizer)
    assert "raised AttributeError" in str(info.value)

    def stub(m, ids):
        raise NotImplementedError
    with pytest.raises(NotImplementedError):
        check_heldout_loss(stub, model, tokenizer)


# ----------------------------------------------------------------- ablate_heads

def test_ablate_heads_accepts_both_methods(small_vocab_model, tokenizer, capsys) -> None:
    out = passes(check_ablate_heads, ablate_ok, small_vocab_model, tokenizer, capsys=capsys)
    assert "2 x 4" in out and "left exactly as it was" in out
    passes(check_ablate_heads, ablate_with_hooks, small_vocab_model, tokenizer, capsys=capsys)


def test_ablate_heads_stand_in(small_vocab_model, tokenizer, capsys, monkeypatch) -> None:
    monkeypatch.setattr(changing, "COPY_LIMIT", 1000)
    out = passes(check_ablate_heads, ablate_ok, small_vocab_model, tokenizer, capsys=capsys)
    assert "small random GPT-2" in out


def test_ablate_heads_absolute_losses(small_vocab_model, tokenizer) -> None:
    def absolute(m, ids):
        return ablate_ok(m, ids) + loss_ok(m, ids)
    fails_with(check_ablate_heads, absolute, small_vocab_model, tokenizer, match="Subtract the baseline")


def test_ablate_heads_never_put_back_but_restored_at_the_end(small_vocab_model, tokenizer) -> None:
    def cumulative(m, ids):
        n_layer, n_head = m.config.n_layer, m.config.n_head
        d_head = m.config.n_embd // n_head
        saved = [blk.attn.c_proj.weight.detach().clone() for blk in m.transformer.h]
        baseline = loss_ok(m, ids)
        deltas = torch.zeros(n_layer, n_head)
        for layer in range(n_layer):
            for head in range(n_head):
                with torch.no_grad():
                    m.transformer.h[layer].attn.c_proj.weight[head * d_head:(head + 1) * d_head] = 0
                deltas[layer, head] = loss_ok(m, ids) - baseline
        with torch.no_grad():
            for blk, w in zip(m.transformer.h, saved):
                blk.attn.c_proj.weight.copy_(w)
        return deltas
    fails_with(check_ablate_heads, cumulative, small_vocab_model, tokenizer, match="stayed removed")


def test_ablate_heads_hooks_left_behind(small_vocab_model, tokenizer) -> None:
    message = fails_with(check_ablate_heads, lambda m, ids: ablate_with_hooks(m, ids, remove=False),
                         small_vocab_model, tokenizer, match="not as it was")
    assert "hook" in message


def test_ablate_heads_weights_not_restored(small_vocab_model, tokenizer) -> None:
    def not_restored(m, ids):
        deltas = ablate_ok(m, ids)
        with torch.no_grad():
            m.transformer.h[1].attn.c_proj.weight[:8] = 0
        return deltas
    fails_with(check_ablate_heads, not_restored, small_vocab_model, tokenizer, match="weight tensors in place")


def test_ablate_heads_output_columns(small_vocab_model, tokenizer) -> None:
    def columns(m, ids):
        n_layer, n_head = m.config.n_layer, m.config.n_head
        d_head = m.config.n_embd // n_head
        baseline = loss_ok(m, ids)
        deltas = torch.zeros(n_layer, n_head)
        for layer in range(n_layer):
            w = m.transformer.h[layer].attn.c_proj.weight
            for head in range(n_head):
                cols = slice(head * d_head, (head + 1) * d_head)
                saved = w[:, cols].detach().clone()
                with torch.no_grad():
                    w[:, cols] = 0
                deltas[layer, head] = loss_ok(m, ids) - baseline
                with torch.no_grad():
                    w[:, cols] = saved
        return deltas
    fails_with(check_ablate_heads, columns, small_vocab_model, tokenizer, match="slice of c_proj's output")


def test_ablate_heads_transposed(small_vocab_model, tokenizer) -> None:
    fails_with(check_ablate_heads, lambda m, ids: ablate_ok(m, ids).T, small_vocab_model, tokenizer,
               match="transpose")


def test_ablate_heads_sign(small_vocab_model, tokenizer) -> None:
    fails_with(check_ablate_heads, lambda m, ids: -ablate_ok(m, ids), small_vocab_model, tokenizer,
               match="multiplied by -1")


@pytest.mark.parametrize("answer, hint", [
    (None, "None"), ([[0.1, 0.2]], "Fill a tensor"), (torch.full((2, 4), float("nan")), "NaN"),
    (torch.zeros(2, 4, dtype=torch.long), "dtype"), (torch.zeros(8), "shape"),
])
def test_ablate_heads_bad_answers(small_vocab_model, tokenizer, answer, hint) -> None:
    fails_with(check_ablate_heads, lambda m, ids: answer, small_vocab_model, tokenizer, match=hint)


# ----------------------------------------------------------------- suppress_tokens

def test_suppress_tokens_accepts_right_answer(model, tokenizer, capsys) -> None:
    out = passes(check_suppress_tokens, suppress_ok, model, tokenizer, capsys=capsys)
    banned = [tokenizer(w)["input_ids"][0] for w in (" herself", " himself")]
    assert str(banned) in out


def test_suppress_tokens_accepts_an_untied_head(model, tokenizer, capsys) -> None:
    def untie_and_bias(m, token_ids):
        edited = copy.deepcopy(m)
        edited.lm_head.weight = nn.Parameter(edited.transformer.wte.weight.detach().clone())
        bias = torch.zeros(m.config.vocab_size)
        bias[token_ids] = -1e9
        edited.lm_head.bias = nn.Parameter(bias)
        return edited
    passes(check_suppress_tokens, untie_and_bias, model, tokenizer, capsys=capsys)


def test_suppress_tokens_edits_the_given_model(model, tokenizer) -> None:
    def in_place(m, token_ids):
        bias = torch.zeros(m.config.vocab_size)
        bias[token_ids] = float("-inf")
        m.lm_head.bias = nn.Parameter(bias)
        return m
    fails_with(check_suppress_tokens, in_place, model, tokenizer, match="Edit a copy")


@pytest.mark.parametrize("value", [0.0, float("-inf"), -1e4])
def test_suppress_tokens_tied_row_edit(model, tokenizer, value) -> None:
    def tied_edit(m, token_ids):
        edited = copy.deepcopy(m)
        with torch.no_grad():
            edited.lm_head.weight[token_ids] = value
        return edited
    fails_with(check_suppress_tokens, tied_edit, model, tokenizer, match="weight tying")


def test_suppress_tokens_zero_rows_after_untying(model, tokenizer) -> None:
    def zero_rows(m, token_ids):
        edited = copy.deepcopy(m)
        edited.lm_head.weight = nn.Parameter(edited.transformer.wte.weight.detach().clone())
        with torch.no_grad():
            edited.lm_head.weight[token_ids] = 0.0
        return edited
    fails_with(check_suppress_tokens, zero_rows, model, tokenizer, match="row of zeros")


def test_suppress_tokens_inf_rows_after_untying(model, tokenizer) -> None:
    def inf_rows(m, token_ids):
        edited = copy.deepcopy(m)
        edited.lm_head.weight = nn.Parameter(edited.transformer.wte.weight.detach().clone())
        with torch.no_grad():
            edited.lm_head.weight[token_ids] = float("-inf")
        return edited
    fails_with(check_suppress_tokens, inf_rows, model, tokenizer, match="NaN")


def test_suppress_tokens_bias_too_small(model, tokenizer) -> None:
    def small_bias(m, token_ids):
        edited = suppress_ok(m, token_ids)
        with torch.no_grad():
            edited.lm_head.bias[token_ids] = -1.0
        return edited
    fails_with(check_suppress_tokens, small_bias, model, tokenizer, match="still get a probability")


def test_suppress_tokens_off_by_one(model, tokenizer) -> None:
    fails_with(check_suppress_tokens, lambda m, ids: suppress_ok(m, [i + 1 for i in ids]),
               model, tokenizer, match="still get a probability")


def test_suppress_tokens_other_logits_moved(model, tokenizer) -> None:
    def shifts_everything(m, token_ids):
        edited = suppress_ok(m, token_ids)
        with torch.no_grad():
            edited.lm_head.bias[edited.lm_head.bias == 0] = -1.0  # softmax unchanged, logits not
        return edited
    fails_with(check_suppress_tokens, shifts_everything, model, tokenizer,
               match="logits of other tokens changed")


def test_suppress_tokens_wrong_bias_shape(model, tokenizer) -> None:
    def short_bias(m, token_ids):
        edited = copy.deepcopy(m)
        edited.lm_head.bias = nn.Parameter(torch.zeros(10))
        return edited
    fails_with(check_suppress_tokens, short_bias, model, tokenizer, match="fails on a forward pass")


@pytest.mark.parametrize("answer, hint", [
    (None, "returned None"), (torch.zeros(3), "returned a tensor"), ("model", "should be a Module"),
])
def test_suppress_tokens_bad_returns(model, tokenizer, answer, hint) -> None:
    fails_with(check_suppress_tokens, lambda m, ids: answer, model, tokenizer, match=hint)


# ----------------------------------------------------------------- training_step

def test_training_step_accepts_right_answer(model, tokenizer, capsys) -> None:
    out = passes(check_training_step, step_ok, model, tokenizer, capsys=capsys)
    assert "two steps of SGD with momentum" in out


def test_training_step_labels_shortcut_and_tensor_return(model, tokenizer, capsys) -> None:
    def with_labels(m, optimizer, ids):
        optimizer.zero_grad()
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        return loss
    passes(check_training_step, with_labels, model, tokenizer, capsys=capsys)


def test_training_step_stand_in(model, tokenizer, capsys, monkeypatch) -> None:
    monkeypatch.setattr(changing, "COPY_LIMIT", 1000)
    out = passes(check_training_step, step_ok, model, tokenizer, capsys=capsys)
    assert "small random GPT-2" in out


def test_training_step_forgot_zero_grad(model, tokenizer) -> None:
    def no_zero_grad(m, optimizer, ids):
        logits = m(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        return loss.item()
    message = fails_with(check_training_step, no_zero_grad, model, tokenizer, match="zero_grad")
    assert "step 2" in message


def test_training_step_forgot_step(model, tokenizer) -> None:
    def no_step(m, optimizer, ids):
        optimizer.zero_grad()
        logits = m(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        return loss.item()
    fails_with(check_training_step, no_step, model, tokenizer, match="never called optimizer.step()")


def test_training_step_zero_grad_between_backward_and_step(model, tokenizer) -> None:
    def wrong_order(m, optimizer, ids):
        logits = m(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()
        return loss.item()
    fails_with(check_training_step, wrong_order, model, tokenizer, match="between backward and step")


def test_training_step_no_backward(model, tokenizer) -> None:
    def no_backward(m, optimizer, ids):
        optimizer.zero_grad()
        with torch.no_grad():
            logits = m(input_ids=ids).logits
        optimizer.step()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()
    fails_with(check_training_step, no_backward, model, tokenizer, match="no gradients")


def test_training_step_no_shift(model, tokenizer) -> None:
    def unshifted(m, optimizer, ids):
        optimizer.zero_grad()
        logits = m(input_ids=ids).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss.item()
    fails_with(check_training_step, unshifted, model, tokenizer, match="No shift")


def test_training_step_right_loss_wrong_update(model, tokenizer) -> None:
    def own_optimizer(m, optimizer, ids):
        return step_ok(m, torch.optim.SGD(m.parameters(), lr=0.5), ids)
    fails_with(check_training_step, own_optimizer, model, tokenizer,
               match="Use the optimizer you were given")


def test_training_step_update_without_shift_but_right_loss(model, tokenizer) -> None:
    def mixed(m, optimizer, ids):
        optimizer.zero_grad()
        logits = m(input_ids=ids).logits
        vocab = logits.shape[-1]
        right = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
        F.cross_entropy(logits.reshape(-1, vocab), ids.reshape(-1)).backward()
        optimizer.step()
        return right.item()
    fails_with(check_training_step, mixed, model, tokenizer, match="as if the loss had no shift")


def test_training_step_using_the_global_model(model, tokenizer) -> None:
    def uses_global(m, optimizer, ids):
        return step_ok(model, torch.optim.SGD(model.parameters(), lr=changing.SGD_LR), ids)
    fails_with(check_training_step, uses_global, model, tokenizer, match="notebook's own `model`")


@pytest.mark.parametrize("answer, hint", [(None, "return"), (float("nan"), "nan")])
def test_training_step_bad_returns(model, tokenizer, answer, hint) -> None:
    def returns(m, optimizer, ids):
        step_ok(m, optimizer, ids)
        return answer
    fails_with(check_training_step, returns, model, tokenizer, match=hint)


# ----------------------------------------------------------------- quantize_rows

def test_quantize_rows_accepts_right_answer(model, capsys) -> None:
    out = passes(check_quantize_rows, quantize_ok, model, capsys=capsys)
    assert "one scale per row" in out


def test_quantize_rows_truncation(model) -> None:
    def truncates(w):
        scale = w.abs().amax(dim=1) / 127
        return (w / scale.clamp(min=1e-12)[:, None]).to(torch.int8), scale
    fails_with(check_quantize_rows, truncates, model, match="truncated")


@pytest.mark.parametrize("divisor, hint", [(128, "not 128"), (255, "uint8"), (127.5, "127.5"),
                                           (1, "not max|w| itself")])
def test_quantize_rows_wrong_divisor(model, divisor, hint) -> None:
    def wrong(w):
        scale = w.abs().amax(dim=1) / divisor
        return torch.round(w / scale.clamp(min=1e-12)[:, None]).to(torch.int8), scale
    fails_with(check_quantize_rows, wrong, model, match=hint)


def test_quantize_rows_no_abs(model) -> None:
    def no_abs(w):
        scale = w.amax(dim=1) / 127
        return torch.round(w / scale.clamp(min=1e-12)[:, None]).clamp(-127, 127).to(torch.int8), scale
    fails_with(check_quantize_rows, no_abs, model, match="absolute")


def test_quantize_rows_one_scale(model) -> None:
    def per_tensor(w):
        scale = w.abs().max() / 127
        return torch.round(w / scale).to(torch.int8), scale
    fails_with(check_quantize_rows, per_tensor, model, match="single value")


def test_quantize_rows_per_column(model) -> None:
    def per_column(w):
        scale = w.abs().amax(dim=0) / 127
        return torch.round(w / scale.clamp(min=1e-12)).clamp(-127, 127).to(torch.int8), scale
    fails_with(check_quantize_rows, per_column, model, match="per column")


@pytest.mark.parametrize("dtype, hint", [(torch.float32, "torch.int8"), (torch.uint8, "uint8"),
                                         (torch.int16, "one byte")])
def test_quantize_rows_wrong_dtype(model, dtype, hint) -> None:
    def wrong(w):
        q, scale = quantize_ok(w)
        return q.to(dtype), scale
    fails_with(check_quantize_rows, wrong, model, match=hint)


def test_quantize_rows_allows_minus_128(model) -> None:
    def asymmetric(w):
        q, scale = quantize_ok(w)
        q = q.clone()
        q[0, 0] = -128
        return q, scale
    fails_with(check_quantize_rows, asymmetric, model, match="-128")


def test_quantize_rows_changes_its_input(model) -> None:
    def in_place(w):
        scale = w.abs().amax(dim=1) / 127
        w.div_(scale.clamp(min=1e-12)[:, None])
        return torch.round(w).to(torch.int8), scale
    fails_with(check_quantize_rows, in_place, model, match="changed its weight matrix in place")


@pytest.mark.parametrize("answer, hint", [
    (None, "None"), (torch.zeros(3, 3, dtype=torch.int8), "returned one value"),
    ((torch.zeros(3),), "scale is missing"),
])
def test_quantize_rows_bad_returns(model, answer, hint) -> None:
    fails_with(check_quantize_rows, lambda w: answer, model, match=hint)


def test_quantize_rows_nan_scale(model) -> None:
    def nan_scale(w):
        q, scale = quantize_ok(w)
        scale = scale.clone()
        scale[5] = float("nan")
        return q, scale
    fails_with(check_quantize_rows, nan_scale, model, match="NaN")


def test_quantize_rows_transposed(model) -> None:
    fails_with(check_quantize_rows, lambda w: (quantize_ok(w)[0].T, quantize_ok(w)[1]), model,
               match="transpose")


# ----------------------------------------------------------------- the fine-tuning text

def balanced_pronoun_sentences() -> list[str]:
    """The recipe behind data/balanced_pronouns.txt (data/README.md names this test)."""
    rng = random.Random(2024)
    sentences = []
    for occupation in corpus.OCCUPATIONS:
        for pronoun in ("herself", "himself", "herself", "himself"):
            template = rng.choice(corpus.SKEW_TEMPLATES)
            sentences.append(corpus._fill(template, rng, occupation=occupation, pronoun=pronoun))
    rng.shuffle(sentences)
    return sentences


def test_fine_tuning_text_comes_from_its_recipe() -> None:
    text = (DATA_DIR / "balanced_pronouns.txt").read_text(encoding="utf-8")
    assert text == "\n".join(balanced_pronoun_sentences()) + "\n"


def test_fine_tuning_text_is_balanced_and_grammatical() -> None:
    lines = (DATA_DIR / "balanced_pronouns.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(set(lines)) == 4 * len(corpus.OCCUPATIONS)
    for line in lines:
        assert corpus.is_grammatical(line), line
    for occupation in corpus.OCCUPATIONS:
        for pronoun in corpus.PRONOUNS:
            assert sum(line.startswith(f"The {occupation} {pronoun} ") for line in lines) == 2


# ----------------------------------------------------------------- catalogue of wrong answers (issue 16)
# Each answer below was written from the exercise text alone and passed the checks before issue 16;
# all run on TinyGPT, the model the notebook loads, so an answer with TinyGPT's sizes written in is
# caught only by the second configuration the checks add.

def _tiny_loss(m, ids):
    logits = m(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def loss_leaves_gradients(m, ids):
    loss = _tiny_loss(m, ids)
    loss.backward()
    return loss.item()


def loss_leaves_training_mode(m, ids):
    m.train()
    with torch.no_grad():
        return _tiny_loss(m, ids).item()


def loss_of_the_first_window(m, ids):
    with torch.no_grad():
        return _tiny_loss(m, ids[:1]).item()


@pytest.mark.parametrize("wrong, hint", [
    (loss_leaves_gradients, "left gradients"),
    (loss_leaves_training_mode, "training mode"),
    (loss_of_the_first_window, "first window only"),
])
def test_heldout_loss_catalogue(tinygpt, wrong, hint) -> None:
    model, tokenizer = tinygpt
    fails_with(check_heldout_loss, wrong, model, tokenizer, match=hint)


def _ablate(m, ids, n_layer, n_head, d_head, cols_of=None, after=None):
    with torch.no_grad():
        base = _tiny_loss(m, ids).item()
    out = torch.zeros(n_layer, n_head)
    for layer in range(n_layer):
        attn = m.transformer.h[layer].attn
        for head in range(n_head):
            weight, cols = (attn.c_proj.weight, (slice(head * d_head, (head + 1) * d_head), slice(None))) \
                if cols_of is None else cols_of(attn, head, d_head)
            saved = weight[cols].detach().clone()
            with torch.no_grad():
                weight[cols] = 0.0
                out[layer, head] = _tiny_loss(m, ids).item() - base
                weight[cols] = saved
    if after is not None:
        after(m, ids)
    return out


def ablate_with_tinygpts_sizes(m, ids):
    return _ablate(m, ids, 4, 4, 16)


def ablate_value_weights_only(m, ids):
    cfg = m.config
    return _ablate(m, ids, cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head,
                   cols_of=lambda attn, h, d: (attn.c_attn.weight,
                                               (slice(None), slice(2 * cfg.n_embd + h * d, 2 * cfg.n_embd + (h + 1) * d))))


def ablate_then_train_mode(m, ids):
    cfg = m.config
    return _ablate(m, ids, cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, after=lambda m, ids: m.train())


def ablate_then_gradients(m, ids):
    cfg = m.config
    return _ablate(m, ids, cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head,
                   after=lambda m, ids: _tiny_loss(m, ids).backward())


@pytest.mark.parametrize("wrong, hint", [
    (ablate_with_tinygpts_sizes, "second model with other sizes"),
    (ablate_value_weights_only, "value weights but not their bias"),
    (ablate_then_train_mode, "training mode"),
    (ablate_then_gradients, "left gradients"),
])
def test_ablate_heads_catalogue(tinygpt, wrong, hint) -> None:
    model, tokenizer = tinygpt
    fails_with(check_ablate_heads, wrong, model, tokenizer, match=hint)


def test_ablate_heads_value_mistake_is_outside_the_tolerance(tinygpt) -> None:
    """The check's tolerance (1e-3 relative) is far below how much the 'value weights only' mistake moves the table."""
    model, tokenizer = tinygpt
    ids = heldout_windows(tokenizer, 2, 32)
    right, wrong = changing._ablation_table(model, ids), changing._ablation_table(model, ids, "value")
    assert float((right - wrong).abs().max()) > 10 * max(2e-5, 1e-3 * float(right.abs().max()))


def suppress_the_notebooks_ids(m, token_ids):
    edited = copy.deepcopy(m)
    bias = torch.zeros(edited.config.vocab_size)
    bias[[5223, 2241]] = float("-inf")   # " herself" and " himself", whatever token_ids says
    edited.lm_head.bias = nn.Parameter(bias, requires_grad=False)
    return edited


def suppress_the_first_id_only(m, token_ids):
    return suppress_ok(m, token_ids[:1])


def suppress_in_training_mode(m, token_ids):
    m.train()
    return suppress_ok(m, token_ids)


@pytest.mark.parametrize("wrong, hint", [
    (suppress_the_notebooks_ids, "the argument, not ids you chose"),
    (suppress_the_first_id_only, "still get a probability"),
    (suppress_in_training_mode, "changed the model it was given (left the model in training mode"),
])
def test_suppress_tokens_catalogue(tinygpt, wrong, hint) -> None:
    model, tokenizer = tinygpt
    fails_with(check_suppress_tokens, wrong, model, tokenizer, match=hint)


def step_with_a_new_optimizer(m, optimizer, ids):
    return step_ok(m, torch.optim.SGD(m.parameters(), lr=changing.SGD_LR), ids)


def step_returning_the_loss_after_the_update(m, optimizer, ids):
    step_ok(m, optimizer, ids)
    with torch.no_grad():
        return _tiny_loss(m, ids).item()


def step_with_clipping(m, optimizer, ids):
    optimizer.zero_grad()
    loss = _tiny_loss(m, ids)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize("wrong, hint", [
    (step_with_a_new_optimizer, "without the momentum"),
    (step_returning_the_loss_after_the_update, "computed before the update"),
    (step_with_clipping, "do not clip"),
])
def test_training_step_catalogue(tinygpt, wrong, hint) -> None:
    model, tokenizer = tinygpt
    fails_with(check_training_step, wrong, model, tokenizer, match=hint)


def test_second_configuration_differs_from_the_loaded_ones(tinygpt) -> None:
    model, _ = tinygpt
    _, _, (other, _), label = changing._subjects(model)
    for key in ("n_layer", "n_head", "n_embd", "layer_norm_epsilon"):
        assert getattr(other.config, key) != getattr(model.config, key), key
    assert other.config.n_embd // other.config.n_head != model.config.n_embd // model.config.n_head
    assert any(float(p.detach().abs().max()) > 0 for n, p in other.named_parameters() if n.endswith("attn.bias"))
    assert other.config.vocab_size != model.config.vocab_size


# GPT-2's vocabulary written in: each is the right answer with vocab=50257. Every course model has
# 50,257 tokens, so only the second model's other vocabulary (changing.SECOND_VOCAB) catches it.
loss_with_gpt2s_vocabulary = functools.partial(loss_ok, vocab=50257)
suppress_with_gpt2s_vocabulary = functools.partial(suppress_ok, vocab=50257)
step_with_gpt2s_vocabulary = functools.partial(step_ok, vocab=50257)


@pytest.mark.parametrize("check, wrong, hint", [
    (check_heldout_loss, loss_with_gpt2s_vocabulary, "second model with other sizes"),
    (check_suppress_tokens, suppress_with_gpt2s_vocabulary, "one value per token (1000)"),
    (check_training_step, step_with_gpt2s_vocabulary, "second model with other sizes"),
])
def test_gpt2s_vocabulary_written_in_is_caught_by_the_second_model(tinygpt, check, wrong, hint) -> None:
    model, tokenizer = tinygpt
    assert model.config.vocab_size == 50257  # why the loaded model alone cannot catch it
    fails_with(check, wrong, model, tokenizer, match=hint)


def quantize_unguarded(weight):
    scale = weight.abs().amax(dim=1) / 127
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def test_quantize_rows_unguarded_zero_row_is_named(model) -> None:
    q, _ = quantize_unguarded(torch.zeros(2, 4))  # on this machine NaN happens to become 0 in int8
    assert not bool(q.any())
    fails_with(check_quantize_rows, quantize_unguarded, model, match="all-zero row (row 300) went "
                                                                     "through 0 / 0")


def test_quantize_rows_guarded_with_where_passes(model, capsys) -> None:
    def where_guard(weight):  # computes 0 / 0, then throws it away before the conversion
        scale = weight.abs().amax(dim=1) / 127
        q = torch.where(scale[:, None] > 0, torch.round(weight / scale[:, None]), 0.0)
        return q.clamp(-127, 127).to(torch.int8), scale
    passes(check_quantize_rows, where_guard, model, capsys=capsys)
