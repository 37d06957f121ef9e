"""Chapter 04's checks: right answers pass, plausible wrong answers fail with their hint.

The wrong answers are written the way a learner would write them (not produced by the
checks' own reference), and run against TinyGPT, the model learners use offline. Each
test asserts on the message the learner would see.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glassbox.exercise_checks.feedback import ExerciseFailed
from glassbox.exercise_checks import forward_pass as fp
from glassbox.exercise_checks.forward_pass import (
    check_attention_head,
    check_gpt2_forward,
    check_layer_norm,
    check_next_token_probs,
    check_transformer_block,
)
from checks.conftest import fails_with, passes


# ----------------------------------------------------------------- right answers, written as a learner would

def ln_ok(x, weight, bias, eps):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def head_ok(x, w_qkv, b_qkv, n_head, head, *, scale=True, diagonal=1, fill=float("-inf"),
            mask=True, softmax_dim=-1, swap=False, bias=True, split_first=True):
    seq, d = x.shape
    dh = d // n_head
    qkv = x @ w_qkv + (b_qkv if bias else 0)
    if split_first:
        q, k, v = qkv.split(d, dim=-1)
        cols = slice(head * dh, (head + 1) * dh)
        q, k, v = q[:, cols], k[:, cols], v[:, cols]
    else:
        q, k, v = qkv.view(seq, n_head, 3 * dh)[:, head].split(dh, dim=-1)
    scores = (k @ q.T) if swap else (q @ k.T)
    if scale:
        scores = scores / math.sqrt(dh)
    if mask:
        scores = scores.masked_fill(torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal),
                                    fill)
    pattern = scores.softmax(dim=softmax_dim)
    return pattern, pattern @ v


def block_ok(x, sd, layer, config, *, head=head_ok, transpose_c_proj=False, act=None,
             attn_residual=True, mlp_residual=True, layer_norm=ln_ok, post_norm=False):
    p = f"transformer.h.{layer}."
    eps = config.layer_norm_epsilon
    act = act or (lambda t: F.gelu(t, approximate="tanh"))

    def attention(h):
        z = torch.cat([head(h, sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"],
                            config.n_head, i)[1] for i in range(config.n_head)], dim=-1)
        w = sd[p + "attn.c_proj.weight"]
        return z @ (w.T if transpose_c_proj else w) + sd[p + "attn.c_proj.bias"]

    def mlp(h):
        h = act(h @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"])
        return h @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]

    def ln(name, t):
        return layer_norm(t, sd[p + name + ".weight"], sd[p + name + ".bias"], eps)

    if post_norm:
        x = ln("ln_1", x + attention(x))
        return ln("ln_2", x + mlp(x))
    a = attention(ln("ln_1", x))
    x = x + a if attn_residual else a
    m = mlp(ln("ln_2", x))
    return x + m if mlp_residual else m


def forward_ok(ids, sd, config, *, block=block_ok, ln_f=True, positions="arange", head_key=None):
    wte = sd["transformer.wte.weight"]
    seq = len(ids)
    x = wte[ids]
    if positions == "arange":
        x = x + sd["transformer.wpe.weight"][torch.arange(seq)]
    elif positions == "shifted":
        x = x + sd["transformer.wpe.weight"][torch.arange(1, seq + 1)]
    for layer in range(config.n_layer):
        x = block(x, sd, layer, config)
    if ln_f:
        x = ln_ok(x, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"],
                  config.layer_norm_epsilon)
    return x @ (sd[head_key] if head_key else wte).T


def probs_ok(logits, temperature=1.0, top_k=None):
    scaled = logits / temperature
    if top_k is not None:
        kth = scaled.topk(top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return scaled.softmax(-1)


def test_right_answers_pass(tinygpt, capsys) -> None:
    out = passes(check_layer_norm, ln_ok, *tinygpt, capsys=capsys)
    assert "constant row" in out
    passes(check_attention_head, head_ok, *tinygpt, capsys=capsys)
    passes(check_transformer_block, block_ok, *tinygpt, capsys=capsys)
    out = passes(check_gpt2_forward, forward_ok, *tinygpt, capsys=capsys)
    assert "largest difference" in out
    passes(check_next_token_probs, probs_ok, *tinygpt, capsys=capsys)


def test_other_right_answers_pass(tinygpt, capsys) -> None:
    """Equivalent answers written differently (library calls, float64, -1e9 masks) also pass."""
    passes(check_layer_norm, lambda x, w, b, eps: F.layer_norm(x.double(), x.shape[-1:], w.double(),
                                                               b.double(), eps), *tinygpt, capsys=capsys)
    passes(check_attention_head, lambda *a: head_ok(*a, fill=-1e9), *tinygpt, capsys=capsys)
    passes(check_transformer_block, lambda *a: block_ok(
        *a, act=lambda t: 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))),
        *tinygpt, capsys=capsys)


def test_not_implemented_passes_through(tinygpt) -> None:
    def stub(*args):
        raise NotImplementedError("todo")
    model, tokenizer = tinygpt
    for check in (check_layer_norm, check_attention_head, check_transformer_block,
                  check_gpt2_forward, check_next_token_probs):
        with pytest.raises(NotImplementedError):
            check(stub, model, tokenizer)


# ----------------------------------------------------------------- layer_norm

def ln_unbiased(x, w, b, eps):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b


def ln_eps_outside(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean) ** 2).mean(-1, keepdim=True).sqrt()
    return (x - mean) / (std + eps) * w + b


@pytest.mark.parametrize("wrong, hint", [
    (ln_unbiased, "biased variance"),
    (ln_eps_outside, "inside the square root"),
    (lambda x, w, b, eps: ln_ok(x, w, b, 0.0), "no epsilon at all"),
    (lambda x, w, b, eps: ln_ok(x, w, b, 1e-6), "eps = 1e-06"),
    (lambda x, w, b, eps: ln_ok(x, w, b, 1e-5), "Use the eps argument"),
    (lambda x, w, b, eps: (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps) * w + b,
     "axis 0"),
    (lambda x, w, b, eps: ln_ok(x, torch.ones_like(w), torch.zeros_like(b), eps),
     "forgot the weight and bias"),
    (lambda x, w, b, eps: ln_ok(x, b, w, eps), "swapped weight and bias"),
    (lambda x, w, b, eps: ln_ok(x, w, torch.zeros_like(b), eps), "forgot to add the bias"),
])
def test_layer_norm_known_mistakes(tinygpt, wrong, hint) -> None:
    message = fails_with(check_layer_norm, wrong, *tinygpt, match=hint)
    assert "of its values match" in message


def test_layer_norm_in_place_is_caught(tinygpt) -> None:
    def in_place(x, w, b, eps):
        x -= x.mean(-1, keepdim=True)
        return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * w + b
    fails_with(check_layer_norm, in_place, *tinygpt, match="in place")


@pytest.mark.parametrize("wrong, hint", [
    (lambda x, w, b, eps: None, "return"),
    (lambda x, w, b, eps: ln_ok(x, w, b, eps).numpy(), "torch.from_numpy"),
    (lambda x, w, b, eps: ln_ok(x, w, b, eps).long(), "dtype"),
    (lambda x, w, b, eps: ln_ok(x, w, b, eps)[None], "batch axis"),
    (lambda x, w, b, eps: ln_ok(x, w, b, eps).T, "transpose"),
    (lambda x, w, b, eps: ln_ok(x, w, b, eps)[:, :-1], "has shape"),
    (lambda x, w, b, eps: ln_ok(x, w, b, eps) * float("nan"), "NaN"),
    (lambda x, w, b, eps: ln_ok(x, w, b, eps) + 0.01 * torch.arange(x.shape[-1]), "values match"),
])
def test_layer_norm_bad_outputs(tinygpt, wrong, hint) -> None:
    fails_with(check_layer_norm, wrong, *tinygpt, match=hint)


def test_layer_norm_crash_becomes_feedback(tinygpt) -> None:
    def crashes(x, w, b, eps):
        return x.mean(-1) @ w  # shape error from a matrix product
    with pytest.raises(ExerciseFailed) as info:
        check_layer_norm(crashes, *tinygpt)
    assert "layer_norm raised RuntimeError" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


# ----------------------------------------------------------------- attention_head

@pytest.mark.parametrize("options, hint", [
    (dict(scale=False), "1/sqrt(d_head)"),
    (dict(mask=False), "No causal mask"),
    (dict(diagonal=0), "nothing left to read"),
    (dict(diagonal=0, fill=-1e9), "cannot read itself"),
    (dict(diagonal=2), "see the next one"),
    (dict(softmax_dim=0), "wrong axis"),
    (dict(swap=True), "k @ q.T"),
    (dict(bias=False), "forgot c_attn's bias"),
    (dict(split_first=False), "split it into q, k and v first"),
])
def test_attention_head_known_mistakes(tinygpt, options, hint) -> None:
    message = fails_with(check_attention_head, lambda *a: head_ok(*a, **options), *tinygpt,
                         match=hint)
    assert "of its values match" in message


def test_attention_head_divides_by_d_head(tinygpt) -> None:
    def by_d_head(x, w, b, n_head, head):
        pattern, z = head_ok(x, w, b, n_head, head, scale=False)
        seq, d = x.shape
        q, k, v = (x @ w + b).split(d, dim=-1)
        dh = d // n_head
        cols = slice(head * dh, (head + 1) * dh)
        scores = q[:, cols] @ k[:, cols].T / dh
        scores = scores.masked_fill(torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1), -math.inf)
        pattern = scores.softmax(-1)
        return pattern, pattern @ v[:, cols]
    fails_with(check_attention_head, by_d_head, *tinygpt, match="square root")


def test_attention_head_mask_after_softmax(tinygpt) -> None:
    def after(x, w, b, n_head, head):
        pattern, _ = head_ok(x, w, b, n_head, head, mask=False)
        seq = x.shape[0]
        pattern = pattern * torch.tril(torch.ones(seq, seq))
        _, _, v = (x @ w + b).split(x.shape[1], dim=-1)
        dh = x.shape[1] // n_head
        return pattern, pattern @ v[:, head * dh:(head + 1) * dh]
    fails_with(check_attention_head, after, *tinygpt, match="no longer sum to 1")


def test_attention_head_conv1d_transpose_is_explained(tinygpt) -> None:
    def transposed(x, w, b, n_head, head):
        return head_ok(x, w.T, b, n_head, head)  # x @ W.T: a shape error
    message = fails_with(check_attention_head, transposed, *tinygpt, match="raised RuntimeError")
    assert "Conv1D stores its weight as (in, out)" in message


@pytest.mark.parametrize("wrong, hint", [
    (lambda *a: head_ok(*a)[0], "expected a tuple"),
    (lambda *a: None, "return pattern, z"),
    (lambda *a: (head_ok(*a)[0],), "z is missing"),
    (lambda *a: head_ok(*a)[::-1], "has shape"),
    (lambda x, w, b, n, h: (head_ok(x, w, b, n, h)[0],
                            (x @ w + b).split(x.shape[1], -1)[2][:, h * (x.shape[1] // n):
                                                                 (h + 1) * (x.shape[1] // n)]),
     "v itself"),
    (lambda x, w, b, n, h: (head_ok(x, w, b, n, h)[0],
                            head_ok(x, w, b, n, h)[0].T
                            @ (x @ w + b).split(x.shape[1], -1)[2][:, h * (x.shape[1] // n):
                                                                   (h + 1) * (x.shape[1] // n)]),
     "transposed pattern"),
    (lambda *a: (head_ok(*a)[0].long(), head_ok(*a)[1]), "dtype"),
])
def test_attention_head_bad_outputs(tinygpt, wrong, hint) -> None:
    fails_with(check_attention_head, wrong, *tinygpt, match=hint)


def test_attention_head_checks_every_head_of_a_layer(tinygpt) -> None:
    def reversed_heads(x, w, b, n_head, head):  # right for the heads the check picks, not all
        return head_ok(x, w, b, n_head, head if head in (n_head - 1, 1) else n_head - 1 - head)
    message = fails_with(check_attention_head, reversed_heads, *tinygpt, match="layer 0, head 0")
    assert "owns columns 0 to" in message


# ----------------------------------------------------------------- transformer_block

@pytest.mark.parametrize("options, hint", [
    (dict(transpose_c_proj=True), "attn.c_proj's weight transposed"),
    (dict(act=F.gelu), "tanh approximation"),
    (dict(act=torch.relu), "This is ReLU"),
    (dict(attn_residual=False), "residual around attention"),
    (dict(mlp_residual=False), "residual around the MLP"),
    (dict(attn_residual=False, mlp_residual=False), "both residual"),
    (dict(post_norm=True), "post-norm"),
    (dict(layer_norm=ln_unbiased), "biased variance"),
    (dict(head=lambda *a: head_ok(*a, scale=False)), "1/sqrt(d_head)"),
    (dict(head=lambda *a: head_ok(*a, diagonal=2)), "see the next one"),
    (dict(head=lambda *a: head_ok(*a, diagonal=0)), "nothing left to read"),
])
def test_transformer_block_known_mistakes(tinygpt, options, hint) -> None:
    message = fails_with(check_transformer_block, lambda *a: block_ok(*a, **options), *tinygpt,
                         match=hint)
    assert "of its values match" in message


def test_transformer_block_mlp_transpose_is_explained(tinygpt) -> None:
    def mlp_transposed(x, sd, layer, config):
        sd = dict(sd)
        sd[f"transformer.h.{layer}.mlp.c_fc.weight"] = sd[f"transformer.h.{layer}.mlp.c_fc.weight"].T
        return block_ok(x, sd, layer, config)
    fails_with(check_transformer_block, mlp_transposed, *tinygpt, match="Conv1D stores its weight")


def test_transformer_block_must_read_sd(tinygpt) -> None:
    model, _ = tinygpt

    def uses_the_model(x, sd, layer, config):
        return model.transformer.h[layer](x[None])[0]
    fails_with(check_transformer_block, uses_the_model, *tinygpt,
               match="transformers' own GPT-2 (forward) ran inside your function")


def test_transformer_block_copying_a_cached_answer_does_not_read_sd(tinygpt) -> None:
    model, tokenizer = tinygpt
    cache = {}

    def remembers(x, sd, layer, config):
        key = (layer, tuple(x.shape))
        if key not in cache:
            cache[key] = block_ok(x, sd, layer, config)
        return cache[key]

    fails_with(check_transformer_block, remembers, *tinygpt, match="does not read the `sd`")


def test_transformer_block_batch_axis(tinygpt) -> None:
    fails_with(check_transformer_block, lambda *a: block_ok(*a)[None], *tinygpt, match="batch axis")


# ----------------------------------------------------------------- gpt2_forward

@pytest.mark.parametrize("options, hint", [
    (dict(ln_f=False), "final LayerNorm ln_f"),
    (dict(positions="none"), "forgot the position embeddings"),
    (dict(positions="shifted"), "positions are off by one"),
    (dict(block=lambda *a: block_ok(*a, act=F.gelu)), "tanh approximation"),
    (dict(block=lambda *a: block_ok(*a, transpose_c_proj=True)), "c_proj's weight transposed"),
    (dict(block=lambda *a: block_ok(*a, head=lambda *h: head_ok(*h, scale=False))),
     "1/sqrt(d_head)"),
    (dict(block=lambda *a: block_ok(*a, head=lambda *h: head_ok(*h, mask=False))),
     "No causal mask"),
    (dict(block=lambda *a: block_ok(*a, mlp_residual=False)), "residual around the MLP"),
    (dict(block=lambda *a: block_ok(*a, layer_norm=ln_eps_outside)), "inside the square root"),
])
def test_gpt2_forward_known_mistakes(tinygpt, options, hint) -> None:
    message = fails_with(check_gpt2_forward, lambda *a: forward_ok(*a, **options), *tinygpt,
                         match=hint)
    assert "of its values match" in message


def test_gpt2_forward_untied_head(tinygpt) -> None:
    message = fails_with(check_gpt2_forward, lambda *a: forward_ok(*a, head_key="lm_head.weight"),
                         *tinygpt, match="tied to the token embedding")
    assert "raised KeyError" in message


def test_gpt2_forward_head_not_transposed(tinygpt) -> None:
    def no_transpose(ids, sd, config):
        logits = forward_ok(ids, sd, config)
        x = torch.linalg.lstsq(sd["transformer.wte.weight"], logits.T).solution.T
        return x @ sd["transformer.wte.weight"]  # (seq, d) @ (vocab, d): a shape error
    fails_with(check_gpt2_forward, no_transpose, *tinygpt, match="Conv1D")


def test_gpt2_forward_must_read_sd(tinygpt) -> None:
    model, _ = tinygpt
    fails_with(check_gpt2_forward, lambda ids, sd, config: model(ids[None]).logits[0], *tinygpt,
               match="transformers' own GPT-2 (forward) ran inside your function")


def test_gpt2_forward_loading_sd_into_transformers_is_named(tinygpt) -> None:
    """Reads sd, and would pass every comparison: but the library computes the answer."""
    from transformers import GPT2LMHeadModel

    def library(ids, sd, config):
        built = GPT2LMHeadModel(config).eval()
        built.load_state_dict(dict(sd), strict=False)
        return built(ids[None]).logits[0]

    fails_with(check_gpt2_forward, library, *tinygpt, match="do not call the model, its modules")


@pytest.mark.parametrize("wrong, hint", [
    (lambda *a: forward_ok(*a).softmax(-1), "probabilities"),
    (lambda *a: forward_ok(*a).log_softmax(-1), "log-probabilities"),
    (lambda *a: forward_ok(*a)[None], "batch axis"),
    (lambda *a: forward_ok(*a)[-1], "only one position"),
    (lambda *a: forward_ok(*a).argmax(-1), "token ids"),
    (lambda *a: None, "return"),
    (lambda *a: forward_ok(*a).tolist(), "torch.Tensor"),
])
def test_gpt2_forward_bad_outputs(tinygpt, wrong, hint) -> None:
    fails_with(check_gpt2_forward, wrong, *tinygpt, match=hint)


# ----------------------------------------------------------------- next_token_probs

def probs_no_renorm(logits, temperature=1.0, top_k=None):
    probs = (logits / temperature).softmax(-1)
    if top_k is not None:
        kth = probs.topk(top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    return probs


@pytest.mark.parametrize("wrong, hint", [
    (lambda logits, t=1.0, k=None: probs_ok(logits * t * t, t, k), "multiplied the logits"),
    (lambda logits, t=1.0, k=None: probs_ok(logits, 1.0, k), "temperature has no effect"),
    (lambda logits, t=1.0, k=None: (logits / t).log_softmax(-1), "log-probabilities"),
    (lambda logits, t=1.0, k=None: logits / t, "apply the softmax"),
    (probs_no_renorm, "renormalise"),
    (lambda logits, t=1.0, k=None: probs_ok(logits, t, None), "has no effect in your answer"),
    (lambda logits, t=1.0, k=None: probs_ok(logits, t, k + 1 if k else None), "You kept"),
    (lambda logits, t=1.0, k=None: probs_ok(logits, t, k)[None], "batch axis"),
])
def test_next_token_probs_known_mistakes(tinygpt, wrong, hint) -> None:
    fails_with(check_next_token_probs, wrong, *tinygpt, match=hint)


def test_next_token_probs_top_k_none_is_explained(tinygpt) -> None:
    def always_top_k(logits, temperature=1.0, top_k=None):
        kth = logits.topk(top_k).values[-1]
        return probs_ok(logits.masked_fill(logits < kth, -math.inf), temperature)
    fails_with(check_next_token_probs, always_top_k, *tinygpt, match="top_k can be None")


def test_next_token_probs_numpy(tinygpt) -> None:
    fails_with(check_next_token_probs,
               lambda logits, t=1.0, k=None: np.asarray(probs_ok(logits, t, k)), *tinygpt,
               match="torch.from_numpy")


# ----------------------------------------------------------------- issue 16: a second configuration, side effects, tolerances
#
# TinyGPT has 4 layers of 4 heads of 16, width 64, LayerNorm eps 1e-5. An answer with those
# numbers written in passes on TinyGPT alone; the checks also run a second, random GPT-2
# (feedback.second_gpt2: 2 layers of 6 heads of 8, width 48, eps 1e-2), where it must fail.

def ln_width_64(x, w, b, eps):
    mean = x.sum(-1, keepdim=True) / 64
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / 64
    return (x - mean) / torch.sqrt(var + eps) * w + b


def test_layer_norm_with_tinygpts_width_written_in_fails_on_the_second_model(tinygpt) -> None:
    fails_with(check_layer_norm, ln_width_64, *tinygpt, match="second model's stream (width 48")


def test_layer_norm_changing_its_weight_is_named_and_undone(tinygpt) -> None:
    model, _ = tinygpt
    weight = model.transformer.h[-1].ln_2.weight
    before = weight.detach().clone()

    def scales_weight_in_place(x, w, b, eps):
        w.mul_(2.0)
        return ln_ok(x, w / 2.0, b, eps)

    fails_with(check_layer_norm, scales_weight_in_place, *tinygpt,
               match="changed its weight in place; the check has put the original values back")
    assert torch.equal(weight.detach(), before)


def test_layer_norm_every_named_mistake_is_outside_the_tolerance(tinygpt) -> None:
    """Each mistake the check names must be rejected on the check's own inputs (tolerance 1e-4)."""
    for variant, hint in fp._LN_MISTAKES + fp._eps_mistakes(1e-5):
        def wrong(x, w, b, eps, variant=variant):
            return fp.reference_layer_norm(x, w, b, eps, variant)
        fails_with(check_layer_norm, wrong, *tinygpt, match=hint[:40])


def head_d16(x, w_qkv, b_qkv, n_head, head):
    """d_head written in as TinyGPT's 16."""
    seq, d = x.shape
    q, k, v = (x @ w_qkv + b_qkv).split(d, dim=-1)
    cols = slice(head * 16, (head + 1) * 16)
    scores = q[:, cols] @ k[:, cols].T / math.sqrt(16)
    scores = scores.masked_fill(torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1), float("-inf"))
    pattern = scores.softmax(-1)
    return pattern, pattern @ v[:, cols]


def test_attention_head_with_tinygpts_head_size_written_in_fails(tinygpt) -> None:
    fails_with(check_attention_head, head_d16, *tinygpt, match="second model's layer 0")


def test_attention_head_ignoring_n_head_fails(tinygpt) -> None:
    fails_with(check_attention_head, lambda x, w, b, n_head, head: head_ok(x, w, b, 4, head),
               *tinygpt, match="(6 heads of 8)")


def test_attention_head_changing_w_qkv_is_named_and_undone(tinygpt) -> None:
    model, _ = tinygpt
    weight = model.transformer.h[0].attn.c_attn.weight
    before = weight.detach().clone()

    def transposes_in_place(x, w, b, n_head, head):
        w.mul_(-1.0).mul_(-1.0).add_(1.0)
        return head_ok(x, w - 1.0, b, n_head, head)

    fails_with(check_attention_head, transposes_in_place, *tinygpt, match="changed its w_qkv in place")
    assert torch.equal(weight.detach(), before)


def test_transformer_block_with_tinygpts_epsilon_written_in_is_named(tinygpt) -> None:
    def block_eps_1e5(x, sd, layer, config):
        return block_ok(x, sd, layer, config, layer_norm=lambda t, w, b, eps: ln_ok(t, w, b, 1e-5))

    fails_with(check_transformer_block, block_eps_1e5, *tinygpt,
               match="LayerNorm with eps = 1e-05; use config.layer_norm_epsilon (0.01 here)")


def test_transformer_block_with_tinygpts_heads_written_in_fails(tinygpt) -> None:
    def block_4_heads(x, sd, layer, config):
        p = f"transformer.h.{layer}."
        z = torch.cat([head_ok(ln_ok(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"],
                                     config.layer_norm_epsilon),
                               sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"], 4, i)[1]
                       for i in range(4)], dim=-1)
        x = x + z @ sd[p + "attn.c_proj.weight"] + sd[p + "attn.c_proj.bias"]
        h = F.gelu(ln_ok(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], config.layer_norm_epsilon)
                   @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"], approximate="tanh")
        return x + h @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]

    fails_with(check_transformer_block, block_4_heads, *tinygpt, match="6 heads")


def test_transformer_block_writing_into_the_state_dict_is_named(tinygpt) -> None:
    def edits_sd(x, sd, layer, config):
        sd[f"transformer.h.{layer}.ln_1.bias"].add_(1.0)
        out = block_ok(x, {**sd, f"transformer.h.{layer}.ln_1.bias":
                           sd[f"transformer.h.{layer}.ln_1.bias"] - 1.0}, layer, config)
        return out

    model, _ = tinygpt
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        fails_with(check_transformer_block, edits_sd, *tinygpt,
                   match="changed 1 of the model's weight tensors in place")
    finally:  # the check cannot undo a change it only sees as a digest; restore for other tests
        model.load_state_dict(before)


def test_gpt2_forward_with_tinygpts_layer_count_written_in_is_named(tinygpt) -> None:
    def four_layers(ids, sd, config):
        from types import SimpleNamespace
        return forward_ok(ids, sd, SimpleNamespace(**{**config.to_dict(), "n_layer": 4}))

    fails_with(check_gpt2_forward, four_layers, *tinygpt, match="take every size from config")


def test_gpt2_forward_with_tinygpts_epsilon_written_in_is_named(tinygpt) -> None:
    def eps_1e5(ids, sd, config):
        from types import SimpleNamespace
        return forward_ok(ids, sd, SimpleNamespace(**{**config.to_dict(), "layer_norm_epsilon": 1e-5}))

    fails_with(check_gpt2_forward, eps_1e5, *tinygpt, match="use config.layer_norm_epsilon (0.01 here)")


def test_gpt2_forward_leaving_gradients_on_the_model_is_named(tinygpt) -> None:
    """An answer that runs backward through the loaded model leaves gradients on it: named."""
    model, _ = tinygpt

    def with_backward(ids, sd, config):
        with torch.enable_grad():  # e.g. a leftover from trying out a loss on the embedding
            model.transformer.wte.weight[ids].pow(2).sum().backward()
        return forward_ok(ids, sd, config)

    try:
        fails_with(check_gpt2_forward, with_backward, *tinygpt, match="left gradients on")
    finally:
        model.zero_grad(set_to_none=True)


def test_next_token_probs_second_temperature_mistakes_are_outside_the_tolerance(tinygpt) -> None:
    """Temperature applied as a power of the probabilities without renormalising is rejected."""
    fails_with(check_next_token_probs, lambda logits, t=1.0, k=None: probs_ok(logits, 1.0, k) ** (1 / t),
               *tinygpt, match="raised the probabilities to the power 1/temperature")


def test_next_token_probs_top_k_counting_ties_is_rejected(tinygpt) -> None:
    """Keeping k tokens by rank is right; keeping every token above a probability floor is not."""
    def floor(logits, t=1.0, k=None):
        probs = (logits / t).softmax(-1)
        if k is not None:
            probs = probs * (probs >= 0.01)
            probs = probs / probs.sum()
        return probs

    fails_with(check_next_token_probs, floor, *tinygpt, match="top_k=5")


def test_next_token_probs_changing_the_logits_in_place_does_not_matter_to_the_check(tinygpt, capsys) -> None:
    """The check hands the learner a copy of the logits, so dividing it in place is no mistake."""
    def in_place(logits, t=1.0, k=None):
        logits /= t
        return probs_ok(logits, 1.0, k)

    passes(check_next_token_probs, in_place, *tinygpt, capsys=capsys)


# ----------------------------------------------------------------- every named mistake, on the check's own inputs
#
# Each usual mistake the checks name is the reference with one setting changed. On the
# inputs the checks use (TinyGPT and the second model), each must land outside the
# tolerance and be rejected with its own hint, or the hint could never be shown.

def _hint_start(hint: str) -> str:
    return hint[:45]


@pytest.mark.parametrize("variant, hint", fp._attention_mistakes(), ids=lambda v: str(v)[:40])
def test_attention_head_rejects_each_named_mistake(tinygpt, variant, hint) -> None:
    def wrong(x, w, b, n_head, head):
        return fp.reference_attention_head(x, w, b, n_head, head, variant)

    fails_with(check_attention_head, wrong, *tinygpt, match=_hint_start(hint))


@pytest.mark.parametrize("variant, hint", fp._block_mistakes(1e-2), ids=lambda v: str(v)[:40])
def test_transformer_block_rejects_each_named_mistake(tinygpt, variant, hint) -> None:
    def wrong(x, sd, layer, config):
        return fp.reference_block(x, sd, layer, config, variant)

    fails_with(check_transformer_block, wrong, *tinygpt, match=_hint_start(hint))


@pytest.mark.parametrize("variant, hint", [
    (fp.Variant(ln_f=False), "You forgot the final LayerNorm"),
    (fp.Variant(positions="none"), "You forgot the position embeddings"),
    (fp.Variant(positions="shifted"), "The positions are off by one"),
    *fp._block_mistakes(1e-2)], ids=lambda v: str(v)[:40])
def test_gpt2_forward_rejects_each_named_mistake(tinygpt, variant, hint) -> None:
    def wrong(ids, sd, config):
        return fp.reference_forward(ids, sd, config, variant)

    fails_with(check_gpt2_forward, wrong, *tinygpt, match=_hint_start(hint))


def test_right_answers_pass_with_another_loaded_model(other_gpt2, capsys) -> None:
    """The checks read every size from the loaded model: a 3-layer, 6-head, eps 1e-6 GPT-2 works too."""
    for check, answer in [(check_layer_norm, ln_ok), (check_attention_head, head_ok),
                          (check_transformer_block, block_ok), (check_gpt2_forward, forward_ok),
                          (check_next_token_probs, probs_ok)]:
        passes(check, answer, *other_gpt2, capsys=capsys)
