"""Checks for chapter 04, "Following a forward pass", and the reference they use.

The reference is GPT-2's forward pass from the raw ``state_dict`` (:func:`reference_forward`
and its parts; tests/test_forward_pass_reimplementation.py holds it to transformers' logits).
Every part takes a :class:`Variant` whose defaults are GPT-2 and whose other values are the
usual mistakes. Ground truth comes from the model's own modules; every check also runs on
``feedback.second_gpt2``, and transformers' GPT-2 modules refuse to run inside a learner's block.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from glassbox.exercise_checks.feedback import (
    Mistakes, Refused, call_learner, check_tensor, close, fail, mistakes_from, passed, refusing,
    second_gpt2, unpack)

__all__ = ["CHECK_PROMPT", "NEXT_TOKEN_PROMPT", "Variant", "check_attention_head",
           "check_gpt2_forward", "check_layer_norm", "check_next_token_probs",
           "check_transformer_block", "reference_attention_head", "reference_block",
           "reference_forward", "reference_layer_norm", "reference_next_token_probs"]

#: The prompt the checks run (it fits TinyGPT's grammar, see glassbox/tinygpt/corpus.py).
CHECK_PROMPT = "<|endoftext|>The cat ran to the garden. Mia found a red ball"
#: The prompt whose next-token distribution the sampling exercise uses.
NEXT_TOKEN_PROMPT = "<|endoftext|>It was a sunny day in the village. The nurse"

_SHAPE_ERROR_HINT = (
    "A shape error inside a matrix product usually means a transposed weight. Hugging Face's "
    "Conv1D stores its weight as (in, out), so a layer is x @ W + b, with no .T "
    "(nn.Linear's convention, W of shape (out, in), is the other way round)."
)
_LEARNER_HINTS: dict[type[BaseException], str] = {RuntimeError: _SHAPE_ERROR_HINT}


def _own_code_only() -> contextlib.AbstractContextManager[None]:
    """While the learner's function runs, transformers' GPT-2 modules refuse to run."""
    from transformers.models.gpt2 import modeling_gpt2 as library

    classes = (library.GPT2Model, library.GPT2Block, library.GPT2Attention, library.GPT2MLP)
    return refusing([(cls, "forward") for cls in classes], "transformers' own GPT-2 (forward)")


_OWN_CODE_HINT = ("This exercise asks for the computation written out from the tensors in sd: "
                  "do not call the model, its modules, or a model built with transformers.")


# --------------------------------------------------------------------------- the reference

@dataclass(frozen=True)
class Variant:
    """How to compute GPT-2's forward pass. The defaults are GPT-2's; each other value is a mistake."""

    transpose_weights: bool = False  # W.T (nn.Linear's convention); only square weights run so
    scale: str = "sqrt"              # divide the scores by sqrt(d_head); or "none", "d_head"
    mask: str = "causal"             # j <= i; "strict" j < i, "one_ahead", "none", "after_softmax"
    mask_fill: float = float("-inf")  # written into masked scores
    softmax_dim: int = -1            # over keys; -2 is over queries
    swap_qk: bool = False            # scores k @ q.T
    split: str = "qkv_then_heads"    # cut [q | k | v] first, then heads; or "heads_then_qkv"
    qkv_bias: bool = True            # add c_attn's bias
    eps: float | None = None         # LayerNorm epsilon; None: the config's (or the argument's)
    eps_outside_sqrt: bool = False   # sqrt(var) + eps
    unbiased: bool = False           # variance divided by n - 1
    ln_axis: int = -1                # features; 0 is the sequence
    ln_affine: bool = True           # apply LayerNorm's weight and bias
    activation: str = "gelu_new"     # GPT-2's tanh GELU; "gelu" (exact, erf) or "relu"
    attn_residual: bool = True       # add attention's output to the residual stream
    mlp_residual: bool = True        # add the MLP's output to the residual stream
    post_norm: bool = False          # normalise after adding (the original Transformer)
    positions: str = "arange"        # wpe[0..seq-1]; "none", "shifted" (1..seq)
    ln_f: bool = True                # the final LayerNorm before the head


CORRECT = Variant()


def reference_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                         variant: Variant = CORRECT) -> torch.Tensor:
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias (biased var)."""
    eps = eps if variant.eps is None else variant.eps
    axis = variant.ln_axis
    mean = x.mean(axis, keepdim=True)
    var = x.var(axis, keepdim=True, unbiased=variant.unbiased)
    if variant.eps_outside_sqrt:
        normed = (x - mean) / (torch.sqrt(var) + eps)
    else:
        normed = (x - mean) / torch.sqrt(var + eps)
    return normed * weight + bias if variant.ln_affine else normed


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: Variant) -> torch.Tensor:
    """A Conv1D layer: x @ W + b, W stored as (in, out)."""
    w = weight.T if variant.transpose_weights and weight.shape[0] == weight.shape[1] else weight
    return x @ w + bias if bias is not None else x @ w


def _activation(x: torch.Tensor, variant: Variant) -> torch.Tensor:
    if variant.activation == "gelu_new":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
    if variant.activation == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if variant.activation == "relu":
        return torch.relu(x)
    raise ValueError(f"unknown activation {variant.activation!r}")


def _qkv_heads(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor, n_head: int,
               variant: Variant) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of every head, each (n_head, seq, d_head)."""
    seq, d_model = x.shape
    d_head = d_model // n_head
    qkv = _linear(x, w_qkv, b_qkv if variant.qkv_bias else None, variant)
    if variant.split == "heads_then_qkv":
        q, k, v = qkv.reshape(seq, n_head, 3 * d_head).split(d_head, dim=-1)
        return tuple(t.transpose(0, 1) for t in (q, k, v))
    q, k, v = qkv.split(d_model, dim=-1)
    return tuple(t.reshape(seq, n_head, d_head).transpose(0, 1) for t in (q, k, v))


def _patterns(q: torch.Tensor, k: torch.Tensor, variant: Variant) -> torch.Tensor:
    """Attention patterns (..., seq, seq): row i holds how much position i reads each position."""
    d_head, seq = q.shape[-1], q.shape[-2]
    scores = (k @ q.transpose(-2, -1)) if variant.swap_qk else (q @ k.transpose(-2, -1))
    if variant.scale == "sqrt":
        scores = scores / math.sqrt(d_head)
    elif variant.scale == "d_head":
        scores = scores / d_head
    allowed_offset = {"causal": 0, "strict": -1, "one_ahead": 1}.get(variant.mask)
    if allowed_offset is not None:  # future[i, j] is True where j - i > allowed_offset
        future = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=allowed_offset + 1)
        scores = scores.masked_fill(future, variant.mask_fill)
    pattern = scores.softmax(dim=variant.softmax_dim)
    if variant.mask == "after_softmax":
        pattern = pattern.masked_fill(torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1), 0.0)
    return pattern


def reference_attention_head(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor,
                             n_head: int, head: int, variant: Variant = CORRECT) -> tuple[torch.Tensor, torch.Tensor]:
    """One head of GPT-2's attention on ``x`` (seq, d_model), already normalised by ln_1."""
    q, k, v = _qkv_heads(x, w_qkv, b_qkv, n_head, variant)
    pattern = _patterns(q[head], k[head], variant)
    return pattern, pattern @ v[head]


def _attention(x: torch.Tensor, sd: Mapping[str, torch.Tensor], prefix: str, n_head: int,
               variant: Variant) -> torch.Tensor:
    seq, d_model = x.shape
    q, k, v = _qkv_heads(x, sd[prefix + "attn.c_attn.weight"], sd[prefix + "attn.c_attn.bias"], n_head, variant)
    z = (_patterns(q, k, variant) @ v).transpose(0, 1).reshape(seq, d_model)
    return _linear(z, sd[prefix + "attn.c_proj.weight"], sd[prefix + "attn.c_proj.bias"], variant)


def _mlp(x: torch.Tensor, sd: Mapping[str, torch.Tensor], prefix: str, variant: Variant) -> torch.Tensor:
    hidden = _activation(_linear(x, sd[prefix + "mlp.c_fc.weight"], sd[prefix + "mlp.c_fc.bias"], variant), variant)
    return _linear(hidden, sd[prefix + "mlp.c_proj.weight"], sd[prefix + "mlp.c_proj.bias"], variant)


def reference_block(x: torch.Tensor, sd: Mapping[str, torch.Tensor], layer: int, config: Any,
                    variant: Variant = CORRECT) -> torch.Tensor:
    """Block ``layer`` of GPT-2 on the residual stream ``x`` (seq, d_model); returns the new stream."""
    prefix = f"transformer.h.{layer}."
    eps = config.layer_norm_epsilon

    def ln(name: str, t: torch.Tensor) -> torch.Tensor:
        return reference_layer_norm(t, sd[prefix + name + ".weight"], sd[prefix + name + ".bias"], eps, variant)

    if variant.post_norm:
        x = ln("ln_1", x + _attention(x, sd, prefix, config.n_head, variant))
        return ln("ln_2", x + _mlp(x, sd, prefix, variant))
    attn_out = _attention(ln("ln_1", x), sd, prefix, config.n_head, variant)
    x = x + attn_out if variant.attn_residual else attn_out
    mlp_out = _mlp(ln("ln_2", x), sd, prefix, variant)
    return x + mlp_out if variant.mlp_residual else mlp_out


def reference_forward(input_ids: torch.Tensor, sd: Mapping[str, torch.Tensor], config: Any,
                      variant: Variant = CORRECT) -> torch.Tensor:
    """GPT-2's logits (seq, vocab) for a 1-D tensor of token ids, from the state_dict alone."""
    ids = torch.as_tensor(input_ids).reshape(-1)
    seq = ids.shape[0]
    wte = sd["transformer.wte.weight"]
    x = wte[ids]
    if variant.positions == "arange":
        x = x + sd["transformer.wpe.weight"][:seq]
    elif variant.positions == "shifted":
        x = x + sd["transformer.wpe.weight"][1:seq + 1]
    for layer in range(config.n_layer):
        x = reference_block(x, sd, layer, config, variant)
    if variant.ln_f:
        x = reference_layer_norm(x, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"],
                                 config.layer_norm_epsilon, variant)
    return x @ wte.T


def reference_next_token_probs(logits: torch.Tensor, temperature: float = 1.0,
                               top_k: int | None = None) -> torch.Tensor:
    """Sampling probabilities: softmax(logits / temperature), keeping only the top_k largest."""
    scaled = logits / temperature
    if top_k is not None:
        kth = scaled.topk(top_k).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return scaled.softmax(dim=-1)


# --------------------------------------------------------------------------- the mistakes

def _attention_mistakes() -> list[tuple[Variant, str]]:
    """The usual mistakes inside one attention head, each as the Variant that makes it."""
    return [
        (Variant(scale="none"), "This is what you get without the 1/sqrt(d_head) scaling: divide "
                                "the scores q @ k.T by math.sqrt(d_head) before the softmax."),
        (Variant(scale="d_head"), "You divided the scores by d_head; GPT-2 divides by its square "
                                  "root, math.sqrt(d_head)."),
        (Variant(mask="none"), "No causal mask: every position also reads the positions after it (the future). Set the "
                               "scores where j > i to -inf before the softmax."),
        (Variant(mask="one_ahead"), "The mask is off by one: each position can still see the next one. torch.triu(..., "
                                    "diagonal=1) marks exactly the future (j > i)."),
        (Variant(mask="strict", mask_fill=-1e9), "The mask is off by one: it also hides the diagonal, so a position "
                                                 "cannot read itself. Mask j > i only: torch.triu(..., diagonal=1)."),
        (Variant(mask="strict"), "The mask is off by one: it also hides the diagonal, so the first position has nothing "
                                 "left to read and its softmax is NaN. Mask j > i only: torch.triu(..., diagonal=1)."),
        (Variant(mask="after_softmax"), "You zeroed the future after the softmax, so the rows no longer sum to 1. Mask "
                                        "the scores with -inf before the softmax instead."),
        (Variant(softmax_dim=-2), "The softmax runs over the wrong axis: each row (one query) "
                                  "must sum to 1, so use softmax(dim=-1)."),
        (Variant(swap_qk=True), "You computed k @ q.T: the pattern is transposed. Row i is query "
                                "i, so the scores are q @ k.T."),
        (Variant(split="heads_then_qkv"), "c_attn's output is [q | k | v] along the last axis: split it into q, k and v "
                                          "first, then cut each into heads."),
        (Variant(qkv_bias=False), "You forgot c_attn's bias: queries, keys and values are x @ W + b."),
    ]


_LN_MISTAKES = [
    (Variant(unbiased=True), "LayerNorm uses the biased variance: divide by n, not n - 1 (x.var(-1, unbiased=False, "
                             "keepdim=True), or ((x - mean) ** 2).mean(-1, keepdim=True))."),
    (Variant(eps_outside_sqrt=True), "The LayerNorm epsilon goes inside the square root: "
                                     "sqrt(var + eps), not sqrt(var) + eps."),
    (Variant(ln_axis=0), "You normalised over the sequence (axis 0); LayerNorm normalises "
                         "each position's vector over its features: axis -1."),
    (Variant(ln_affine=False), "You normalised but forgot the weight and bias: multiply by weight, then add bias."),
]


def _block_mistakes(eps: float | None = None) -> list[tuple[Variant, str]]:
    """The usual mistakes of a whole block: the Conv1D transpose, attention's, the MLP's, LayerNorm's."""
    return [
        *(_eps_mistakes(eps, "config.layer_norm_epsilon") if eps is not None else
          [(Variant(eps=0.0), "You left out the LayerNorm epsilon: divide by sqrt(var + eps) "
                              "with eps = config.layer_norm_epsilon.")]),
        (Variant(transpose_weights=True),
         "This is what you get with attn.c_proj's weight transposed. Conv1D stores its weight as (in, out): the layer "
         "is x @ W + b, no .T. A square weight raises no shape error when transposed, so nothing warns you."),
        *_attention_mistakes(),
        (Variant(activation="gelu"), "This is the exact GELU (erf); GPT-2 uses the tanh "
                                     "approximation, 'gelu_new': 0.5 * x * (1 + tanh(sqrt(2/pi) "
                                     "* (x + 0.044715 * x**3))), or F.gelu(x, approximate='tanh')."),
        (Variant(activation="relu"), "This is ReLU; GPT-2's MLP uses GELU (the tanh approximation)."),
        (Variant(attn_residual=False), "You forgot the residual around attention: the block adds "
                                       "attention's output to its input, x = x + attn(ln_1(x))."),
        (Variant(mlp_residual=False), "You forgot the residual around the MLP: x = x + mlp(ln_2(x))."),
        (Variant(attn_residual=False, mlp_residual=False),
         "You forgot both residual connections: x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))."),
        (Variant(post_norm=True), "You normalised after adding (the original Transformer's post-norm); GPT-2 normalises "
                                  "the input of each sublayer: x + attn(ln_1(x))."),
        *_LN_MISTAKES[:2],
    ]


def _eps_mistakes(eps: float, source: str = "the eps you were given") -> list[tuple[Variant, str]]:
    """LayerNorm with another usual epsilon (none, 1e-5 as in GPT-2, ...) than ``eps``."""
    out = []
    for other in (0.0, 1e-12, 1e-8, 1e-6, 1e-5, 1e-3):
        if not math.isclose(other, eps, rel_tol=1e-9, abs_tol=0.0):
            what = "no epsilon at all (eps = 0)" if other == 0 else f"eps = {other:g}"
            out.append((Variant(eps=other), f"This is LayerNorm with {what}; use {source} "
                                            f"({eps:g} here)."))
    return out


def _prompt_ids(tokenizer: Any, model: nn.Module, prompt: str = CHECK_PROMPT) -> torch.Tensor:
    ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.long)
    if int(ids.max()) >= model.config.vocab_size:
        raise ValueError("the tokenizer does not fit this model's vocabulary")
    return ids[: model.config.n_positions]


def _run_model(model: nn.Module, ids: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The residual stream entering each block (then leaving the last) and each block's attention
    output, captured with hooks from one run of the model itself."""
    streams: list[torch.Tensor] = []
    attention_out: list[torch.Tensor] = []
    hooks = [block.register_forward_pre_hook(lambda m, args: streams.append(args[0][0].detach()))
             for block in [*model.transformer.h, model.transformer.ln_f]]
    hooks += [block.attn.register_forward_hook(lambda m, args, out: attention_out.append(
        (out[0] if isinstance(out, tuple) else out)[0].detach())) for block in model.transformer.h]
    try:
        with torch.no_grad():
            model(ids[None])
    finally:
        for hook in hooks:
            hook.remove()
    return streams, attention_out


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def _perturbed_state(sd: Mapping[str, torch.Tensor], layers: Iterable[int],
                     final: bool = False) -> dict[str, torch.Tensor]:
    """A shallow copy of ``sd`` with a few small tensors changed (no large copy)."""
    out = dict(sd)
    gen = torch.Generator().manual_seed(4)
    names = [f"transformer.h.{layer}.{part}" for layer in layers
             for part in ("ln_1.bias", "attn.c_proj.bias", "ln_2.weight", "mlp.c_proj.bias")]
    if final:
        names += ["transformer.ln_f.bias", "transformer.wpe.weight"]
    for name in names:
        t = sd[name]
        out[name] = t + 0.5 * t.abs().mean().clamp_min(0.05) * torch.randn(t.shape, generator=gen)
    return out


# --------------------------------------------------------------------------- exercise 1

def _layer_norm_mistakes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                         usual_eps: float) -> Mistakes:
    """The usual LayerNorm mistakes on this input, computed when needed."""
    eps_mistakes = (_eps_mistakes(eps) if eps == usual_eps else
                    [(Variant(eps=usual_eps), f"Use the eps argument: this case passes eps={eps:g}, "
                                              f"but your answer used {usual_eps:g}.")])
    generated = mistakes_from(lambda v: reference_layer_norm(x, weight, bias, eps, v), [*_LN_MISTAKES, *eps_mistakes])

    def mistakes() -> Iterable[tuple[torch.Tensor, str]]:
        yield from generated()
        yield (reference_layer_norm(x, bias, weight, eps), "You swapped weight and bias: normalised * weight + bias.")
        yield (reference_layer_norm(x, weight, torch.zeros_like(bias), eps), "You forgot to add the bias.")
    return mistakes


def check_layer_norm(layer_norm: Callable[..., Any], model: nn.Module, tokenizer: Any) -> None:
    """Check ``layer_norm(x, weight, bias, eps)`` against the model's own LayerNorm modules."""
    ids = _prompt_ids(tokenizer, model)
    streams = _run_model(model, ids)[0]
    other = second_gpt2(model)
    other_stream = _run_model(other, ids)[0][0]
    d = model.config.n_embd
    gen = torch.Generator().manual_seed(0)
    first, last = model.transformer.h[0].ln_1, model.transformer.h[-1].ln_2
    eps = float(first.eps)
    small = math.sqrt(eps) * torch.randn(6, d, generator=gen)
    constant = torch.cat([small[:3], torch.full((1, d), 0.25)])
    other_eps = 1e-3 if not math.isclose(eps, 1e-3) else 1e-2
    ln = other.transformer.h[0].ln_1
    # The rows of small variance come first: there the epsilon's mistakes differ clearly.
    cases = [
        ("rows with a variance close to eps, with ln_2 of the last block", small, last, eps),
        ("rows including a constant one (variance 0)", constant, last, eps),
        (f"the rows of variance about {eps:g} with eps={other_eps:g}", small, last, other_eps),
        ("the residual stream entering block 0, with ln_1 of block 0", streams[0], first, eps),
        (f"a second model's stream (width {other.config.n_embd}, eps={ln.eps:g})", other_stream, ln, float(ln.eps)),
    ]
    for label, x, module, case_eps in cases:
        weight, bias = module.weight.detach(), module.bias.detach()
        with torch.no_grad():  # the model's own module, or the same LayerNorm with another eps
            expected = (module(x) if case_eps == module.eps
                        else nn.functional.layer_norm(x, x.shape[-1:], weight, bias, case_eps))
            got = call_learner(layer_norm, x, weight, bias, case_eps, name="layer_norm",
                               protect={"input x": x, "weight": weight, "bias": bias})
        check_tensor(got, expected, f"layer_norm on {label}",
                     known_mistakes=_layer_norm_mistakes(x, weight, bias, case_eps, float(module.eps)),
                     rtol=1e-4, atol=1e-4,
                     hint="(x - mean) / sqrt(var + eps) * weight + bias, with mean and the biased "
                          "variance taken over the last axis (keepdim=True).")
    passed("layer_norm: matches the model's LayerNorm on the residual stream, on rows of "
           "variance near eps and on a constant row, uses the eps it is given, and matches a "
           f"second model's LayerNorm (width {other.config.n_embd}).")


# --------------------------------------------------------------------------- exercise 2

def _head_answer(attention_head: Callable[..., Any], x: torch.Tensor, w: torch.Tensor,
                 b: torch.Tensor, n_head: int, head: int) -> tuple[Any, Any]:
    with torch.no_grad():
        got = call_learner(attention_head, x, w, b, n_head, head, name="attention_head",
                           hints=_LEARNER_HINTS, protect={"input x": x, "w_qkv": w, "b_qkv": b})
    return unpack(got, ("pattern", "z"), "attention_head")


def _head_inputs(model: nn.Module, streams: list[torch.Tensor], layer: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ln_1 of the stream entering block ``layer``, and that block's c_attn weight and bias."""
    block = model.transformer.h[layer]
    with torch.no_grad():
        return block.ln_1(streams[layer]), block.attn.c_attn.weight.detach(), \
            block.attn.c_attn.bias.detach()


def _check_head(attention_head: Callable[..., Any], label: str, model: nn.Module,
                streams: list[torch.Tensor], layer: int, head: int) -> None:
    """One head of one block: the pattern, then z, each with the usual mistakes named."""
    n_head = model.config.n_head
    x, w, b = _head_inputs(model, streams, layer)
    seq, d_head = x.shape[0], x.shape[1] // n_head
    with torch.no_grad():
        pattern, z = reference_attention_head(x, w, b, n_head, head)
    got_pattern, got_z = _head_answer(attention_head, x, w, b, n_head, head)
    check_tensor(got_pattern, pattern, f"the pattern for {label}",
                 known_mistakes=mistakes_from(
                     lambda v: reference_attention_head(x, w, b, n_head, head, v)[0],
                     _attention_mistakes()),
                 rtol=1e-4, atol=1e-6, hint="scores = q @ k.T / sqrt(d_head); set scores[i, j] = -inf where j > i; "
                      "then softmax over the last axis.")

    def z_mistakes() -> Iterable[tuple[torch.Tensor, str]]:
        v = _qkv_heads(x, w, b, n_head, CORRECT)[2][head]
        yield pattern.T @ v, "You multiplied the transposed pattern with v: z = pattern @ v."
        yield v, ("This is v itself: the head's output is the pattern-weighted sum of the values, z = pattern @ v.")
    check_tensor(got_z, z, f"z for {label}", known_mistakes=z_mistakes,
                 hint=f"z = pattern @ v, with v the head's slice of the values: shape "
                      f"({seq}, {d_head}).")


def check_attention_head(attention_head: Callable[..., Any], model: nn.Module, tokenizer: Any) -> None:
    """Check ``attention_head(x, w_qkv, b_qkv, n_head, head) -> (pattern, z)``."""
    ids = _prompt_ids(tokenizer, model)
    n_layer, n_head = model.config.n_layer, model.config.n_head
    d_head, seq = model.config.n_embd // n_head, len(ids)
    streams, attention_out = _run_model(model, ids)
    for layer, head in dict.fromkeys([(0, n_head - 1), (n_layer - 1, min(1, n_head - 1))]):
        _check_head(attention_head, f"layer {layer}, head {head}", model, streams, layer, head)
    other = second_gpt2(model)
    c = other.config
    _check_head(attention_head, f"a second model's layer 0, head {c.n_head - 1} ({c.n_head} heads "
                f"of {c.n_embd // c.n_head})", other, _run_model(other, ids)[0], 0, c.n_head - 1)
    # Every head of block 0, then all of them through c_proj: the model's attention output.
    x, w, b = _head_inputs(model, streams, 0)
    zs = [check_tensor(_head_answer(attention_head, x, w, b, n_head, h)[1],
                       reference_attention_head(x, w, b, n_head, h)[1], f"z for layer 0, head {h}",
                       hint=f"Head {h} owns columns {h * d_head} to {(h + 1) * d_head - 1} of q, k "
                            "and v.") for h in range(n_head)]
    c_proj = model.transformer.h[0].attn.c_proj
    with torch.no_grad():
        combined = torch.cat(zs, dim=-1) @ c_proj.weight + c_proj.bias
    check_tensor(combined, attention_out[0], f"all {n_head} heads of layer 0 through c_proj",
                 hint="The heads' outputs, side by side in head order, then c_proj, should give "
                      "the model's attention output.")
    passed(f"attention_head: the causal pattern ({seq} x {seq}) and output ({seq} x {d_head}) "
           f"match for two heads and for a head of a second model with {c.n_head} heads, and "
           f"all {n_head} heads of layer 0 together give the model's own attention output.")


# --------------------------------------------------------------------------- exercise 3

# A correct block differs from the model's by about 1e-6; the exact GELU by about 5e-5.
_BLOCK_RTOL, _BLOCK_ATOL = 1e-5, 1e-5


def _check_block(transformer_block: Callable[..., Any], label: str, x: torch.Tensor,
                 expected: torch.Tensor, sd: Mapping[str, torch.Tensor], layer: int,
                 config: Any, model: nn.Module) -> None:
    with torch.no_grad(), _own_code_only():
        got = call_learner(transformer_block, x, sd, layer, config, name="transformer_block",
                           hints={Refused: _OWN_CODE_HINT, **_LEARNER_HINTS}, protect={"input x": x}, model=model)
    check_tensor(got, expected, label, rtol=_BLOCK_RTOL, atol=_BLOCK_ATOL,
                 known_mistakes=mistakes_from(
                     lambda variant: reference_block(x, sd, layer, config, variant),
                     _block_mistakes(config.layer_norm_epsilon)),
                 hint="x = x + attention(ln_1(x)); x = x + mlp(ln_2(x)), every layer as x @ W + b with W read from sd.")


def check_transformer_block(transformer_block: Callable[..., Any], model: nn.Module, tokenizer: Any) -> None:
    """Check ``transformer_block(x, sd, layer, config) -> x`` for the first and last blocks."""
    ids = _prompt_ids(tokenizer, model)
    streams = _run_model(model, ids)[0]
    sd = _model_state(model)
    config = model.config
    layers = list(dict.fromkeys([0, config.n_layer - 1]))
    for layer in layers:
        _check_block(transformer_block, f"transformer_block(x, sd, {layer}, config)",
                     streams[layer], streams[layer + 1], sd, layer, config, model)
    changed = _perturbed_state(sd, layers)
    layer = layers[-1]
    with torch.no_grad():
        expected = reference_block(streams[layer], changed, layer, config)
        with _own_code_only():
            got = call_learner(transformer_block, streams[layer], changed, layer, config, name="transformer_block",
                               hints={Refused: _OWN_CODE_HINT, **_LEARNER_HINTS})
    if close(got, streams[layer + 1], _BLOCK_RTOL, _BLOCK_ATOL):
        fail("transformer_block gives the loaded model's output even for a state dict whose "
             "tensors were changed: it does not read the `sd` it is given.",
             "Take every weight from sd, e.g. sd[f'transformer.h.{layer}.ln_1.weight'], not from model.")
    check_tensor(got, expected, f"transformer_block on a state dict with changed weights "
                 f"(layer {layer})", rtol=_BLOCK_RTOL, atol=_BLOCK_ATOL, hint="Read every tensor from the sd argument.")
    other = second_gpt2(model)
    other_streams = _run_model(other, ids)[0]
    _check_block(transformer_block, f"transformer_block on block 0 of a second model (width "
                 f"{other.config.n_embd}, {other.config.n_head} heads, eps="
                 f"{other.config.layer_norm_epsilon:g})", other_streams[0], other_streams[1],
                 _model_state(other), 0, other.config, other)
    passed(f"transformer_block: matches the model's blocks {' and '.join(map(str, layers))} "
           "and a second model's block 0, and reads its weights from the state dict it is given.")


# --------------------------------------------------------------------------- exercise 4

_TIED_HINT = ("GPT-2's output layer is tied to the token embedding: logits = x @ wte.T with "
              "sd['transformer.wte.weight']. GPT-2's own checkpoint files store no separate "
              "lm_head.weight, and this check also runs your function on such a state dict.")
_FORWARD_HINTS = {
    Refused: _OWN_CODE_HINT,
    KeyError: lambda exc: _TIED_HINT if "lm_head" in str(exc) else (
        f"The state dict has no entry {exc}. Take every size from config (config.n_layer, "
        "config.n_head, config.layer_norm_epsilon): this check also runs a second model with "
        "other sizes."),
    **_LEARNER_HINTS}

# The lesson's target: logits within 1e-4 (plus 1e-5 relative, for trained GPT-2's large logits).
_LOGITS_RTOL, _LOGITS_ATOL = 1e-5, 1e-4


def _forward_mistakes(ids: torch.Tensor, sd: Mapping[str, torch.Tensor], config: Any,
                      expected: torch.Tensor) -> Mistakes:
    generated = mistakes_from(
        lambda variant: reference_forward(ids, sd, config, variant),
        [(Variant(ln_f=False), "You forgot the final LayerNorm ln_f before the output layer."),
         (Variant(positions="none"), "You forgot the position embeddings: x = wte[ids] + wpe[0..seq-1]."),
         (Variant(positions="shifted"), "The positions are off by one: the first token gets "
                                        "wpe[0], so use torch.arange(seq)."),
         *_block_mistakes(config.layer_norm_epsilon)])

    def mistakes() -> Iterable[tuple[torch.Tensor, str]]:
        yield expected.softmax(-1), "These are probabilities; return the logits, before any softmax."
        yield expected.log_softmax(-1), "These are log-probabilities; return the raw logits."
        yield from generated()
    return mistakes


def _forward_answer(gpt2_forward: Callable[..., Any], ids: torch.Tensor,
                    sd: Mapping[str, torch.Tensor], config: Any, model: nn.Module) -> Any:
    with torch.no_grad(), _own_code_only():
        got = call_learner(gpt2_forward, ids.clone(), sd, config, name="gpt2_forward",
                           hints=_FORWARD_HINTS, model=model)
    if isinstance(got, torch.Tensor) and not got.is_floating_point() and got.shape == ids.shape:
        fail(f"gpt2_forward returned {got.dtype} values of shape {tuple(got.shape)}: token ids, "
             "one per position, probably from an argmax.",
             f"Return the logits themselves, shape ({len(ids)}, {config.vocab_size}): one score "
             "for every token of the vocabulary at every position.")
    return got


def check_gpt2_forward(gpt2_forward: Callable[..., Any], model: nn.Module, tokenizer: Any) -> None:
    """Check ``gpt2_forward(input_ids, sd, config) -> logits`` (seq, vocab) against the model."""
    ids = _prompt_ids(tokenizer, model)
    sd = _model_state(model)
    config = model.config
    with torch.no_grad():
        expected = model(ids[None]).logits[0]
    label = "gpt2_forward(input_ids, sd, config)"
    got = _forward_answer(gpt2_forward, ids, sd, config, model)
    got = check_tensor(got, expected, label, known_mistakes=_forward_mistakes(ids, sd, config, expected),
                       rtol=_LOGITS_RTOL, atol=_LOGITS_ATOL,
                       hint="Embeddings plus positions, every block in order, ln_f, then x @ wte.T.")
    largest = float((got - expected).abs().max())
    without_head = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    check_tensor(_forward_answer(gpt2_forward, ids, without_head, config, model), expected,
                 f"{label} for a state dict without lm_head.weight", rtol=_LOGITS_RTOL,
                 atol=_LOGITS_ATOL, hint=_TIED_HINT)
    changed = _perturbed_state(sd, range(config.n_layer), final=True)
    got = _forward_answer(gpt2_forward, ids, changed, config, model)
    with torch.no_grad():
        changed_expected = reference_forward(ids, changed, config)
    if close(got, expected, _LOGITS_RTOL, _LOGITS_ATOL):
        fail("gpt2_forward returns the loaded model's logits even for a state dict whose tensors "
             "were changed: it does not read the `sd` it is given.",
             "Compute everything from sd; do not call model(...).")
    check_tensor(got, changed_expected, f"{label} on a state dict with changed weights",
                 rtol=_LOGITS_RTOL, atol=_LOGITS_ATOL, hint="Read every tensor from the sd argument.")
    other = second_gpt2(model)
    other_sd = _model_state(other)
    with torch.no_grad():
        other_expected = other(ids[None]).logits[0]
    check_tensor(_forward_answer(gpt2_forward, ids, other_sd, other.config, other), other_expected,
                 f"{label} for a second model (width {other.config.n_embd}, "
                 f"{other.config.n_layer} layers of {other.config.n_head} heads, eps="
                 f"{other.config.layer_norm_epsilon:g})",
                 known_mistakes=_forward_mistakes(ids, other_sd, other.config, other_expected),
                 rtol=_LOGITS_RTOL, atol=_LOGITS_ATOL,
                 hint="Read every size from config (n_layer, n_head, layer_norm_epsilon) and every tensor from sd.")
    passed(f"gpt2_forward: the logits for {len(ids)} tokens match the model's (largest difference "
           f"{largest:.1e}), also from a state dict without lm_head.weight and for a second model "
           "of other sizes, and follow the state dict's weights when they change.")


# --------------------------------------------------------------------------- exercise 5

def check_next_token_probs(next_token_probs: Callable[..., Any], model: nn.Module, tokenizer: Any) -> None:
    """Check ``next_token_probs(logits, temperature, top_k)`` on the model's next-token logits."""
    ids = _prompt_ids(tokenizer, model, NEXT_TOKEN_PROMPT)
    with torch.no_grad():
        logits = model(ids[None]).logits[0, -1]
    for temperature, top_k in [(1.0, None), (0.5, None), (2.0, None), (1.0, 5), (0.7, 3)]:
        with torch.no_grad():
            got = call_learner(next_token_probs, logits.clone(), temperature, top_k, name="next_token_probs",
                               hints={TypeError: "top_k can be None (keep every token) or an int."})
        expected = reference_next_token_probs(logits, temperature, top_k)
        label = f"next_token_probs(logits, temperature={temperature:g}, top_k={top_k})"

        def mistakes(temperature: float = temperature, top_k: int | None = top_k) -> Iterable[tuple[torch.Tensor, str]]:
            yield (reference_next_token_probs(logits, 1 / temperature, top_k),
                   "You multiplied the logits by the temperature; divide them by it: a high "
                   "temperature flattens the distribution.")
            yield (reference_next_token_probs(logits, 1.0, top_k),
                   "The temperature has no effect in your answer: divide the logits by it before the softmax.")
            yield (logits / temperature, "These are scaled logits: apply the softmax.")
            yield (reference_next_token_probs(logits, 1.0, top_k) ** (1 / temperature),
                   "You raised the probabilities to the power 1/temperature but did not renormalise; dividing the "
                   "logits by the temperature before the softmax does both.")
            yield (torch.log_softmax(logits / temperature, -1) if top_k is None else
                   reference_next_token_probs(logits, temperature, top_k).log(),
                   "These are log-probabilities; return probabilities (softmax, not log_softmax).")
            if top_k is not None:
                full = reference_next_token_probs(logits, temperature)
                kept = reference_next_token_probs(logits, temperature, top_k) > 0
                yield (full * kept, "You zeroed everything outside the top k but did not "
                                    "renormalise: the kept probabilities must sum to 1.")
                yield (full, f"top_k={top_k} has no effect in your answer: keep only the "
                             f"{top_k} largest logits (the rest get probability 0).")
                for k in (top_k - 1, top_k + 1):
                    if k >= 1:
                        yield (reference_next_token_probs(logits, temperature, k),
                               f"You kept {k} tokens; top_k={top_k} keeps exactly {top_k}.")

        check_tensor(got, expected, label, known_mistakes=mistakes, rtol=1e-4, atol=1e-7,
                     hint="probs = softmax(logits / temperature); with top_k, set every logit below "
                      "the k-th largest to -inf first.")
    top = int(logits.argmax())
    passed(f"next_token_probs: right for temperatures 0.5, 0.7, 1 and 2, with and without top-k "
           f"(the model's favourite next token is {tokenizer.decode([top])!r}).")

