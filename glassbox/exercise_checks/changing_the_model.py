"""Checks for chapter 05, "Changing the model and running it yourself".

The learner's function gets a copy of the loaded model (``copy.deepcopy``), or, above
``COPY_LIMIT`` parameters, a small seeded GPT-2 built here (the ✓ message says so); the
functions meant for any GPT-2 also run on a second, random GPT-2 whose sizes and vocabulary
all differ (``feedback.second_gpt2``). Afterwards both the model given and the notebook's own
``model`` must be as before (``feedback.ModelState``: weights, gradients, mode, hooks).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from glassbox.exercise_checks.feedback import (
    ModelState, call_learner, check_number, check_tensor, check_type, fail, passed, second_gpt2,
    unpack)

__all__ = ["COPY_LIMIT", "check_ablate_heads", "check_heldout_loss", "check_quantize_rows",
           "check_suppress_tokens", "check_training_step", "heldout_windows"]

#: Above this many parameters the learner's function runs on a small stand-in model.
COPY_LIMIT: int = 20_000_000
#: The second model's vocabulary: not GPT-2's 50,257, which every course model has.
SECOND_VOCAB: int = 1_000

#: The SGD optimizer the training-step check hands over: its momentum makes a fresh
#: optimizer built inside the function differ from the one given, from the second step on.
SGD_LR: float = 0.05
SGD_MOMENTUM: float = 0.9

# --------------------------------------------------------------------------- helpers

@lru_cache(maxsize=1)
def _validation_excerpt() -> str:
    from glassbox.tinygpt import corpus

    return corpus.validation_text()[:4000]


def heldout_windows(tokenizer: Any, n_windows: int, length: int, offset: int = 0) -> torch.Tensor:
    """``n_windows`` consecutive windows of ``length`` tokens of TinyGPT's validation text."""
    ids = tokenizer(_validation_excerpt(), verbose=False)["input_ids"]
    needed = offset + n_windows * length
    if len(ids) < needed:
        raise ValueError(f"the validation excerpt has {len(ids)} tokens, {needed} are needed")
    return torch.tensor(ids[offset:needed], dtype=torch.long).view(n_windows, length)


def _describe(model: nn.Module) -> str:
    c = model.config
    return (f"{c.n_layer} layers, {c.n_head} heads of {c.n_embd // c.n_head}, LayerNorm epsilon "
            f"{c.layer_norm_epsilon:g}")


def _subjects(model: nn.Module, n: int = 2) -> tuple[list[nn.Module], str, list[nn.Module], str]:
    """``n`` identical dropout-free models for the learner and the reference, and their label;
    then ``n`` copies of a random GPT-2 whose sizes and vocabulary all differ, and its label."""
    size = sum(p.numel() for p in model.parameters())
    if size <= COPY_LIMIT:
        base, label = model, "a copy of the loaded model"
    else:
        base = second_gpt2(model)
        label = (f"a small random GPT-2 built for the check ({_describe(base)}; two copies of the "
                 f"loaded {size / 1e6:,.0f}M-parameter model would not fit the memory budget)")
    copies = [copy.deepcopy(base) for _ in range(n)]
    for module in (m for c in copies for m in c.modules() if isinstance(m, nn.Dropout)):
        module.p = 0.0  # so that train() and eval() compute the same thing
    other = second_gpt2(base, vocab_size=SECOND_VOCAB)
    return [c.eval() for c in copies], label, [copy.deepcopy(other) for _ in range(n)], \
        f"a second, random GPT-2 ({_describe(other)}, a vocabulary of {SECOND_VOCAB:,})"


def _notebook_untouched(state: ModelState, model: nn.Module, label: str) -> None:
    problems = state.problems(model)
    if problems:
        fail(f"{label} changed the notebook's own `model` ({'; '.join(w for w, _ in problems)}), "
             "not the model it was given as an argument.",
             "Use the `model` parameter of your function, never the global variable. Then "
             "reload the notebook's model with load_model() and run the check again.")


def _mean_loss(logits: torch.Tensor, ids: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """Mean cross-entropy of position t predicting token t + shift (shift 0 = the token itself)."""
    t, vocab = ids.shape[1], logits.shape[-1]
    return F.cross_entropy(logits[:, : t - shift].reshape(-1, vocab).float(), ids[:, shift:].reshape(-1))


@torch.no_grad()
def _reference_loss(model: nn.Module, ids: torch.Tensor, shift: int = 1) -> float:
    return _mean_loss(model(input_ids=ids).logits, ids, shift).item()


# --------------------------------------------------------------------------- exercise 1

_SIZES_HINT = ("The check also runs your function on a second model with other sizes: take every "
               "size from the model (model.config.n_layer, n_head, n_embd, or logits.shape[-1] for "
               "the vocabulary), never from the loaded model.")
_LOSS_HINT = ("F.cross_entropy(logits[:, :-1].reshape(-1, vocab), input_ids[:, 1:].reshape(-1)) "
              "under torch.no_grad(), with vocab = logits.shape[-1].")
_SHIFT_HINTS = {0: "No shift: the logits at position t predict token t + 1. Compare "
                   "logits[:, :-1] with input_ids[:, 1:].",
                2: "You shifted twice. If you pass labels=input_ids to the model, it shifts for "
                   "you; if you shift yourself, compute the cross-entropy yourself."}


def _loss_mistakes(model: nn.Module, ids: torch.Tensor, expected: float) -> list[tuple[float, str]]:
    n_windows, length = ids.shape
    return [
        *((_reference_loss(model, ids, shift=s), hint) for s, hint in _SHIFT_HINTS.items()),
        (expected / math.log(2), "That is in bits (log base 2). Use the natural logarithm, as "
                                 "F.cross_entropy does: nats per token."),
        (math.exp(expected), "That is the perplexity, exp(loss). Return the loss itself."),
        (expected * n_windows * (length - 1), "That is the sum over all predicted tokens: return the mean per token."),
        (expected * (length - 1), "That is the sum over each window, averaged over windows: return the mean per token."),
        (_reference_loss(model, ids[:1]), "That is the loss of the first window only: use every window of the batch."),
    ]


def check_heldout_loss(heldout_loss: Callable[[nn.Module, torch.Tensor], Any],
                       model: nn.Module, tokenizer: Any) -> None:
    """Check ``heldout_loss(model, input_ids) -> float``: mean next-token loss in nats."""
    (subject, pristine), label, (other, other_pristine), other_label = _subjects(model)
    notebook = ModelState(model)
    values = []
    for mine, reference, who, shape in ((subject, pristine, label, (2, 32)), (subject, pristine, label, (3, 20)),
                                        (other, other_pristine, other_label, (2, 24))):
        ids = heldout_windows(tokenizer, *shape) % mine.config.vocab_size
        expected = _reference_loss(reference, ids)
        got = call_learner(heldout_loss, mine, ids.clone(), name=f"heldout_loss on {who}",
                           model=mine, hints={RuntimeError: _SIZES_HINT, IndexError: _SIZES_HINT})
        _notebook_untouched(notebook, model, "heldout_loss")
        values.append(check_number(got, expected, f"heldout_loss on {shape[0]} windows of "
                                   f"{shape[1]} tokens ({who})",
                                   known_mistakes=lambda: _loss_mistakes(reference, ids, expected),
                                   rel_tol=1e-4, hint=_LOSS_HINT))
    passed(f"heldout_loss: {values[0]:.4f} nats per token on 2 windows of 32 held-out tokens, "
           f"right for 3 windows of 20 too (on {label}) and on {other_label}; the model came back "
           "with the same weights, no gradients and the same mode.")


# --------------------------------------------------------------------------- exercise 2

_ABLATIONS = {
    # mistake: (the module hooked, a pre- or post-hook, which block of its features)
    None: ("c_proj", "pre", 0), "absolute": ("c_proj", "pre", 0), "cumulative": ("c_proj", "pre", 0),
    "columns": ("c_proj", "post", 0), "value": ("c_attn", "post", 2)}


@torch.no_grad()
def _ablation_table(model: nn.Module, ids: torch.Tensor, mistake: str | None = None) -> torch.Tensor:
    """Loss increase when each head is zeroed (a pre-hook on attn.c_proj), or a known mistake."""
    n_layer, n_head, d = model.config.n_layer, model.config.n_head, model.config.n_embd
    d_head = d // n_head
    where, kind, block = _ABLATIONS[mistake]
    baseline = _reference_loss(model, ids)
    table = torch.zeros(n_layer, n_head)
    handles = []
    try:
        for layer in range(n_layer):
            module = getattr(model.transformer.h[layer].attn, where)
            for head in range(n_head):
                cols = slice(block * d + head * d_head, block * d + (head + 1) * d_head)
                if kind == "pre":
                    def hook(module, args, cols=cols):
                        hidden = args[0].clone()
                        hidden[..., cols] = 0.0
                        return (hidden,) + tuple(args[1:])
                    handles.append(module.register_forward_pre_hook(hook))
                else:
                    def hook(module, args, output, cols=cols):
                        output = output.clone()
                        output[..., cols] = module.bias[cols]
                        return output
                    handles.append(module.register_forward_hook(hook))
                table[layer, head] = _reference_loss(model, ids)
                if mistake != "cumulative":
                    handles.pop().remove()
    finally:
        for handle in handles:
            handle.remove()
    return table if mistake == "absolute" else table - baseline


_ABLATION_HINTS = {
    "absolute": "These are the losses with each head removed. Subtract the baseline: the loss of "
                "the intact model on the same tokens.",
    "cumulative": "Each head stayed removed while you removed the next ones. Remove the hook "
                  "(handle.remove()) or restore the weights before moving on.",
    "columns": "You zeroed the head's slice of c_proj's output. A head's output enters c_proj as its *input* features "
               "h*d_head:(h+1)*d_head: zero those (Conv1D's weight is (in, out), so the rows of c_proj.weight).",
    "value": "You zeroed the head's value weights but not their bias, so the head still adds its "
             "value bias. Zero the head's input to c_proj (the rows of c_proj.weight) instead.",
}
_ABLATE_HINT = ("For each (layer, head): zero that head's slice of the input of transformer.h[layer].attn.c_proj, "
                "measure the loss, put it back; subtract the intact model's loss. Take the sizes from model.config.")


def _ablation_mistakes(model: nn.Module, ids: torch.Tensor, expected: torch.Tensor) -> list:
    n_layer, n_head = expected.shape
    out = [(expected.T, "Rows are layers and columns are heads: result[layer, head].")] \
        if n_layer == n_head else []
    return out + [(_ablation_table(model, ids, m), hint) for m, hint in _ABLATION_HINTS.items()]


def check_ablate_heads(ablate_heads: Callable[[nn.Module, torch.Tensor], Any],
                       model: nn.Module, tokenizer: Any) -> None:
    """Check ``ablate_heads(model, input_ids) -> Tensor (n_layer, n_head)`` of loss increases."""
    (subject, pristine), label, (other, other_pristine), other_label = _subjects(model)
    notebook = ModelState(model)
    results = []
    for mine, reference, who, length in ((subject, pristine, label, 32), (other, other_pristine, other_label, 24)):
        ids = heldout_windows(tokenizer, 2, length) % mine.config.vocab_size
        expected = _ablation_table(reference, ids)
        state = ModelState(mine)
        got = call_learner(ablate_heads, mine, ids.clone(), name=f"ablate_heads on {who}",
                           hints={IndexError: _SIZES_HINT, RuntimeError: _SIZES_HINT})
        _notebook_untouched(notebook, model, "ablate_heads")
        problems = state.problems(mine)
        if problems:
            fail(f"After ablate_heads on {who}, the model is not as it was: "
                 f"{'; '.join(what for what, _ in problems)}.",
                 "Put every head back before removing the next one: keep the handle of each hook and call "
                 "handle.remove(), or restore the weights you zeroed (clone them first); measure under torch.no_grad() "
                 "and leave the mode as it was. Reload the model with load_model() if yours is broken.")
        if isinstance(got, (list, tuple)):
            fail(f"ablate_heads returned a {type(got).__name__}; expected a torch.Tensor of shape "
                 f"{tuple(expected.shape)}.", "Fill a tensor: deltas = torch.zeros(n_layer, n_head), then "
                 "deltas[layer, head] = ablated_loss - baseline.")
        check_tensor(got, expected, f"ablate_heads on {who} (shape {tuple(expected.shape)})",
                     rtol=1e-3, atol=max(2e-5, 1e-3 * float(expected.abs().max())),
                     known_mistakes=lambda: _ablation_mistakes(reference, ids, expected), hint=_ABLATE_HINT)
        results.append(expected)
    top = divmod(int(results[0].argmax()), results[0].shape[1])
    passed(f"ablate_heads: all {results[0].shape[0]} x {results[0].shape[1]} loss increases match "
           f"(largest: layer {top[0]}, head {top[1]}, +{float(results[0].max()):.4f} nats) on "
           f"{label}, and all {results[1].numel()} on {other_label}; each model was left exactly "
           "as it was.")


# --------------------------------------------------------------------------- exercise 3

def _single_ids(tokenizer: Any, words: tuple[str, ...], vocab: int, fallback: list[int]) -> list[int]:
    ids = [tokenizer(word, verbose=False)["input_ids"] for word in words]
    return [i[0] for i in ids] if all(len(i) == 1 and i[0] < vocab for i in ids) else fallback


def check_suppress_tokens(suppress_tokens: Callable[[nn.Module, list[int]], Any],
                          model: nn.Module, tokenizer: Any) -> None:
    """Check ``suppress_tokens(model, token_ids) -> model``: an edited copy that never produces them."""
    (subject, pristine), label, (other, other_pristine), other_label = _subjects(model)
    notebook = ModelState(model)
    vocab = pristine.config.vocab_size
    text = "The nurse herself was happy. The pilot himself had a red map. Mia found a box."
    text_ids = torch.tensor([tokenizer(text, verbose=False)["input_ids"]])
    pairs = [_single_ids(tokenizer, (" herself", " himself"), vocab, [min(11, vocab - 1), min(13, vocab - 2)]),
             _single_ids(tokenizer, (" nurse", " map"), vocab, [min(17, vocab - 3), min(19, vocab - 4)])]
    for mine, reference, banned in ((subject, pristine, pairs[0]), (subject, pristine, pairs[1]),
                                    (other, other_pristine, [i % SECOND_VOCAB for i in pairs[0]])):
        n_vocab = reference.config.vocab_size
        ids = text_ids.clamp(max=n_vocab - 1) if mine is subject else text_ids % n_vocab
        with torch.no_grad():
            before = reference(input_ids=ids).logits
        state = ModelState(mine)
        got = call_learner(suppress_tokens, mine, list(banned), name="suppress_tokens")
        _notebook_untouched(notebook, model, "suppress_tokens")
        if got is None:
            fail("suppress_tokens returned None; expected the edited model.",
                 "End with `return edited` (the copy you changed).")
        if isinstance(got, torch.Tensor):
            fail("suppress_tokens returned a tensor; expected a model (an nn.Module).",
                 "Return the edited copy of the model itself, not its weights or logits.")
        check_type(got, nn.Module, "suppress_tokens(model, token_ids)", hint="Return the edited copy of the model.")
        problems = [what for what, _ in state.problems(mine)]
        if got is mine or problems:
            what = "; ".join(problems) if problems else "it returned that same object"
            fail(f"suppress_tokens changed the model it was given ({what}).",
                 "Edit a copy: edited = copy.deepcopy(model), change edited, return edited.")
        _check_suppressed(got, reference, ids, before, banned, n_vocab)
    passed(f"suppress_tokens: tokens {pairs[0]} and then {pairs[1]} (the ids you were given) get "
           "probability < 1e-6 at every position, every other logit and the input embeddings "
           f"are unchanged, and the model you passed in was left alone; checked on {label} and "
           f"on {other_label}.")


def _check_suppressed(got: nn.Module, pristine: nn.Module, ids: torch.Tensor, before: torch.Tensor,
                      banned: list[int], vocab: int) -> None:
    try:
        with torch.no_grad():
            after = got(input_ids=ids).logits
    except Exception as exc:  # noqa: BLE001 - a broken edit becomes feedback
        fail(f"The model returned by suppress_tokens fails on a forward pass: "
             f"{type(exc).__name__}: {exc}",
             f"Check the shapes of what you changed: lm_head.bias needs one value per token ({vocab}).")
    if after.shape != before.shape:
        fail(f"The edited model's logits have shape {tuple(after.shape)}, expected "
             f"{tuple(before.shape)}.", "Keep the vocabulary size unchanged.")
    embedding_now = got.transformer.wte.weight.detach()
    embedding_before = pristine.transformer.wte.weight.detach()
    if not torch.equal(embedding_now, embedding_before):
        rows = (embedding_now != embedding_before).any(dim=1).nonzero().flatten().tolist()
        fail(f"The edited model's input embedding changed (rows {rows[:4]}): it now reads "
             "those tokens differently, not only avoids producing them.",
             "lm_head.weight IS transformer.wte.weight (weight tying): editing a row of one "
             "edits the other. Leave the matrix alone and add a bias to lm_head, or untie "
             "first: edited.lm_head.weight = nn.Parameter(wte.weight.detach().clone()).")
    if torch.isnan(after).any():
        fail("The edited model's logits contain NaN.",
             "-inf times a weight of 0 gives NaN. Put -inf (or a large negative number) into a "
             "bias added to the logits, not into the weight matrix.")
    probs = torch.softmax(after.float(), dim=-1)
    worst = float(probs[..., banned].max())
    if worst > 1e-6:
        zeroed = bool(torch.allclose(after[..., banned], torch.zeros_like(after[..., banned]), atol=1e-6))
        fail(f"The suppressed tokens {banned} still get a probability of up to {worst:.2g} "
             "(expected below 1e-6 at every position).",
             "A row of zeros gives a logit of 0, not a very negative one." if zeroed else
             "Lower the logits of the ids in token_ids (the argument, not ids you chose) by a large amount for every "
             "input: a bias of -inf (or -1e9) at those ids. An API's logit_bias of -100 is the same idea.")
    others = torch.ones(vocab, dtype=torch.bool)
    others[banned] = False
    if not torch.allclose(after[..., others], before[..., others], rtol=1e-4, atol=1e-4):
        moved = ((after - before).abs().amax(dim=(0, 1)) > 1e-4) & others
        some = moved.nonzero().flatten().tolist()[:4]
        fail(f"The logits of other tokens changed too ({int(moved.sum())} tokens, e.g. ids {some}).",
             "Only the given token ids may change. Check your indices: token_ids is a list of "
             "ids, e.g. bias[token_ids] = -inf.")


# --------------------------------------------------------------------------- exercise 4

def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=SGD_LR, momentum=SGD_MOMENTUM)


def _twin(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A deep copy of the model and its optimizer (with its momentum) and the gradients."""
    model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
    for mine, theirs in zip(model_copy.parameters(), model.parameters()):
        mine.grad = None if theirs.grad is None else theirs.grad.detach().clone()
    return model_copy, optimizer_copy


def _reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
                    shift: int = 1, zero_grad: bool = True) -> float:
    if zero_grad:
        optimizer.zero_grad()
    loss = _mean_loss(model(input_ids=ids).logits, ids, shift)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def _step_variants(before: tuple[nn.Module, torch.optim.Optimizer], ids: torch.Tensor
                   ) -> list[tuple[nn.Module, str, str]]:
    """The weights after this step with one thing done wrong: (weights, what happened, hint)."""
    out = []
    for settings, what, hint in (
            ({"zero_grad": False}, "the weights moved by the gradients of this step and the previous one added together",
             "PyTorch adds new gradients to the old ones: call optimizer.zero_grad() at the start of every step."),
            ({"shift": 0}, "the weights moved as if the loss had no shift",
             "The logits at position t predict token t + 1: logits[:, :-1] against input_ids[:, 1:].")):
        twin, optimizer = _twin(*before)
        _reference_step(twin, optimizer, ids, **settings)
        out.append((twin, what, hint))
    fresh = copy.deepcopy(before[0])
    _reference_step(fresh, _sgd(fresh), ids)
    out.append((fresh, "the weights moved as if the optimizer had just been created, without the "
                       "momentum it remembers from the earlier steps",
                "Use the optimizer you were given; do not build a new one inside the function."))
    return out


def _check_steps(training_step: Callable[..., Any], learner: nn.Module, reference: nn.Module,
                 notebook: ModelState, model: nn.Module, tokenizer: Any) -> None:
    """Two SGD steps of the learner's function against the reference's, on one model."""
    batches = [heldout_windows(tokenizer, 2, 16, offset=o) % learner.config.vocab_size for o in (0, 32)]
    opt_learner, opt_reference = _sgd(learner), _sgd(reference)
    for step, ids in enumerate(batches, start=1):
        before = _twin(reference, opt_reference)  # with the gradients and momentum of the last step
        expected = _reference_step(reference, opt_reference, ids)
        got = call_learner(training_step, learner, opt_learner, ids.clone(), name="training_step",
                           hints={RuntimeError: _SIZES_HINT, IndexError: _SIZES_HINT})
        _notebook_untouched(notebook, model, "training_step")
        check_number(got, expected, f"the loss training_step returned at step {step}",
                     known_mistakes=lambda: [(_reference_loss(before[0], ids, shift=s), hint)
                                             for s, hint in _SHIFT_HINTS.items()],
                     rel_tol=1e-4, hint="Return the mean next-token cross-entropy of this batch, computed before "
                          "the update: loss.item().")
        scale = _max_diff(reference, before[0])
        if _max_diff(learner, reference) <= 1e-3 * scale + 1e-7:
            continue
        if _max_diff(learner, before[0]) <= 1e-3 * scale + 1e-7:
            grads = [p.grad for p in learner.parameters() if p.grad is not None]
            if grads and any(bool(g.abs().sum() > 0) for g in grads):
                fail(f"After step {step} the weights have not changed, but the gradients are "
                     "there.", "You never called optimizer.step().")
            fail(f"After step {step} the weights have not changed and there are no gradients.",
                 "Call loss.backward() and then optimizer.step(). optimizer.zero_grad() goes "
                 "before the backward pass (or after the step), never between backward and step.")
        for variant, what, hint in _step_variants(before, ids):
            if _max_diff(learner, variant) <= 1e-3 * scale + 1e-7:
                fail(f"After step {step} {what}.", hint)
        fail(f"After step {step} the weights differ from one SGD step on this batch (largest "
             f"difference {_max_diff(learner, reference):.3g}; the step itself moved them by up "
             f"to {scale:.3g}).", "Use the optimizer you were given (do not build a new one), do not clip, scale or "
             "accumulate, and compute the loss on this batch only.")


def check_training_step(training_step: Callable[..., Any], model: nn.Module, tokenizer: Any) -> None:
    """Check ``training_step(model, optimizer, input_ids) -> float`` over two SGD steps with momentum."""
    (learner, reference, initial), label, (other, other_reference, _), other_label = _subjects(model, 3)
    notebook = ModelState(model)
    _check_steps(training_step, learner, reference, notebook, model, tokenizer)
    _check_steps(training_step, other, other_reference, notebook, model, tokenizer)
    passed(f"training_step: the losses and the weights after two steps of SGD with momentum (lr "
           f"{SGD_LR}, momentum {SGD_MOMENTUM}) match a reference step (gradients reset, forward, "
           f"shifted loss, backward, the given optimizer's step); the weights moved by up to "
           f"{_max_diff(learner, initial):.3g}; checked on {label} and on {other_label}.")


# --------------------------------------------------------------------------- exercise 5

def _quantization_matrix(model: nn.Module) -> torch.Tensor:
    """600 rows of the token embedding, and at row 300: all zeros, a negative extreme, an outlier."""
    rows = model.transformer.wte.weight.detach()[:600].float().clone()
    d = rows.shape[1]
    special = torch.zeros(3, d)
    special[1] = torch.linspace(-1.0, 0.5, d)          # largest |value| is negative
    special[2, :] = 0.01
    special[2, d // 2] = 3.0                            # one outlier
    return torch.cat([rows[:300], special, rows[300:]])


class _NaNToInteger(TorchFunctionMode):
    """Notes when a float tensor holding NaN is converted to an integer dtype (0 / 0 cast to int8)."""

    seen = False

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        src = args[0] if args else None
        if isinstance(out, torch.Tensor) and isinstance(src, torch.Tensor) and \
                src.is_floating_point() and not out.is_floating_point() and out.dtype != torch.bool \
                and bool(torch.isnan(src).any()):
            self.seen = True
        return out


_SCALE_FACTORS = (
    (127 / 128, "Divide by 127, not 128: int8 stops at +127, so the largest value would round to 128 and overflow."),
    (127 / 127.5, "PyTorch's own per-row int8 divides by 127.5 and lets values reach -128; this "
                  "exercise uses 127 on both sides of zero."),
    (127 / 255, "255 steps is the range of uint8; a symmetric int8 scale uses 127 on each side of zero."),
    (127 / 256, "Divide by 127: the scale is max|w| / 127."),
    (127.0, "The scale is max|w| / 127, not max|w| itself."),
)
_ZERO_ROW_HINT = ("Its scale is 0, and 0 / 0 is NaN, which becomes garbage in int8 (whatever the platform makes of it). "
                  "Guard it: scale.clamp(min=1e-12) before dividing, or torch.where(scale > 0, ...).")


def check_quantize_rows(quantize_rows: Callable[[torch.Tensor], Any], model: nn.Module) -> None:
    """Check ``quantize_rows(weight) -> (q, scale)``: symmetric int8, one scale per row."""
    weight = _quantization_matrix(model)
    rows, cols = weight.shape
    absmax = weight.abs().amax(dim=1)
    expected_scale = absmax / 127
    safe = torch.where(expected_scale > 0, expected_scale, torch.ones_like(expected_scale))
    with _NaNToInteger() as watch:
        got = call_learner(quantize_rows, weight, name="quantize_rows", protect={"weight matrix": weight})
    q, scale = unpack(got, ("q", "scale"), "quantize_rows")
    check_type(q, torch.Tensor, "q (element 0 of your tuple)")
    check_type(scale, torch.Tensor, "scale (element 1 of your tuple)")
    if q.dtype == torch.uint8:
        fail("q has dtype torch.uint8, which holds 0..255 only; weights are negative too.",
             "Use torch.int8 (-128..127) with a symmetric scale.")
    if q.dtype != torch.int8:
        fail(f"q has dtype {q.dtype}; expected torch.int8 (one byte per value).",
             "Round first, then convert: torch.round(w / scale[:, None]).to(torch.int8).")
    if q.shape != weight.shape:
        fail(f"q has shape {tuple(q.shape)}, expected {tuple(weight.shape)} (the matrix's).",
             "That is the transpose." if q.shape == weight.T.shape else None)
    if not scale.is_floating_point():
        fail(f"scale has dtype {scale.dtype}; expected a float tensor.",
             "scale = w.abs().amax(dim=1) / 127 is already a float tensor.")
    if scale.numel() == 1:
        fail("scale has a single value for the whole matrix; expected one per row.",
             "One scale per row: w.abs().amax(dim=1) / 127, shape (rows,).")
    if scale.shape in {(cols,), (1, cols)} and cols != rows:
        fail(f"scale has shape {tuple(scale.shape)}: one per column; expected one per row ({rows},).",
             "Take the maximum along dim=1 (across each row).")
    if scale.numel() != rows:
        fail(f"scale has shape {tuple(scale.shape)}, expected ({rows},).",
             "One scale per row: w.abs().amax(dim=1) / 127.")
    scale = scale.detach().reshape(rows).float()
    if torch.isnan(scale).any() or torch.isinf(scale).any():
        fail("scale contains NaN or infinite values.", "The maximum of |w| is always finite "
             "here; did you divide by something that can be 0?")
    if bool((q[300] != 0).any()):
        fail("The all-zero row (row 300) did not quantise to zeros.", _ZERO_ROW_HINT)
    if watch.seen:
        fail("The all-zero row (row 300) went through 0 / 0 = NaN on its way to int8 (it came out "
             "as zeros on this machine, by chance of the conversion).", _ZERO_ROW_HINT)
    nonzero = absmax > 0
    check_tensor(scale[nonzero], expected_scale[nonzero], "scale (rows that are not all zero)", rtol=1e-4, atol=1e-12,
                 known_mistakes=lambda: [(weight.amax(dim=1)[nonzero] / 127,
                                          "scale uses the largest value of each row, not the largest *absolute* value: "
                                          "rows whose extreme is negative then overflow. Use w.abs().amax(dim=1) / 127.")]
                 + [(expected_scale[nonzero] * f, h) for f, h in _SCALE_FACTORS],
                 hint="scale[i] = max |w[i]| / 127 (w.abs().amax(dim=1) / 127).")
    q_float = q.float()
    if int(q_float.abs().max()) > 127:
        fail("q reaches -128: symmetric int8 uses -127..127 so that +x and -x get the same step.",
             "Clamp: torch.round(w / scale[:, None]).clamp(-127, 127).")
    error = (q_float * scale[:, None] - weight).abs()
    bad = error > safe[:, None] / 2 * (1 + 1e-4) + 1e-12
    if bad.any():
        if torch.equal(q_float, torch.trunc(weight / safe[:, None])):
            fail(f"{int(bad.sum()):,} values are off by more than half a step: q was truncated "
                 "toward zero, not rounded.", "Converting to int8 cuts the fraction off. Round first: "
                 "torch.round(w / scale[:, None]).to(torch.int8).")
        sign_flips = int(((q_float * weight) < 0).sum())
        if sign_flips:
            fail(f"{sign_flips:,} values changed sign: they overflowed the int8 range.",
                 "Values must stay in -127..127 before the conversion to int8.")
        fail(f"{int(bad.sum()):,} of {weight.numel():,} values are off by more than half a step "
             f"after dequantising (q * scale); largest error {float(error.max()):.3g}.",
             "q = round(w / scale[:, None]): rounding to the nearest step keeps every error within scale / 2.")
    mismatch = int((q_float != torch.round(weight / safe[:, None])).sum())
    passed(f"quantize_rows: int8 values in -127..127 with one scale per row (max|w| / 127), "
           f"every value within half a step of the original (largest error {float(error.max()):.2g}"
           + (f"; {mismatch} exact ties rounded the other way" if mismatch else "")
           + f"), the all-zero row handled without 0 / 0; tested on {rows - 3} rows of the model's "
           "token embedding plus three tricky rows.")
