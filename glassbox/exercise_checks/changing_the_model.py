"""Checks for chapter 05, "Changing the model and running it yourself".

Each ``check_*`` function calls the learner's function and compares the result with a
reference computed here from the loaded model (or data), never with a typed-in number.

The learner's function never receives the notebook's own model. It gets a copy
(``copy.deepcopy``) when the model is small; for a model above ``COPY_LIMIT``
parameters (GPT-2 and larger) two copies would not fit the course's memory budget, so
it gets a small seeded GPT-2 built here instead, and the ✓ message says so. Afterwards
the check compares the copy with a pristine twin ("you changed the model you were
given") and the notebook's model with a fingerprint taken before the call ("your
function changed the notebook's `model`, not the one passed in").

Known mistakes (a loss without the shift, a head ablation that is never undone, a
forgotten ``zero_grad``, a tied row edited through ``lm_head``, truncation instead of
rounding...) are computed from the same model with that one thing done wrong, so
their hints fire for whichever model is loaded.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glassbox.exercise_checks.feedback import (
    call_learner,
    check_number,
    check_tensor,
    check_type,
    fail,
    passed,
)

__all__ = [
    "COPY_LIMIT",
    "check_ablate_heads",
    "check_heldout_loss",
    "check_quantize_rows",
    "check_suppress_tokens",
    "check_training_step",
    "heldout_windows",
]

#: Above this many parameters the learner's function runs on a small stand-in model.
COPY_LIMIT: int = 20_000_000

#: The learning rate of the plain SGD optimizer the training-step check hands over.
SGD_LR: float = 0.05


# --------------------------------------------------------------------------- helpers

@lru_cache(maxsize=1)
def _validation_excerpt() -> str:
    from glassbox.tinygpt import corpus

    return corpus.validation_text()[:4000]


def heldout_windows(tokenizer: Any, n_windows: int, length: int, offset: int = 0) -> torch.Tensor:
    """``n_windows`` consecutive windows of ``length`` tokens of TinyGPT's validation text.

    Returns a long tensor of shape ``(n_windows, length)``. The validation text comes
    from the same generator as TinyGPT's training data with another seed, so no model
    of the course was trained on it.
    """
    ids = tokenizer(_validation_excerpt(), verbose=False)["input_ids"]
    needed = offset + n_windows * length
    if len(ids) < needed:
        raise ValueError(f"the validation excerpt has {len(ids)} tokens, {needed} are needed")
    return torch.tensor(ids[offset:needed], dtype=torch.long).view(n_windows, length)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _no_dropout(model: nn.Module) -> nn.Module:
    """Switch every dropout off, so train() and eval() compute the same thing."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.eval()


def _stand_in(model: nn.Module) -> nn.Module:
    """A small GPT-2 with the loaded model's vocabulary, seeded, with weights big enough
    that every head matters a little (a fresh GPT-2's heads barely change the loss)."""
    vocab = model.config.vocab_size
    eos = getattr(model.config, "eos_token_id", None)
    return _build_stand_in(vocab, eos if isinstance(eos, int) and eos < vocab else 0)


@lru_cache(maxsize=2)
def _build_stand_in(vocab: int, eos: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=vocab,
                        bos_token_id=eos, eos_token_id=eos,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        stand_in = GPT2LMHeadModel(config)
        with torch.no_grad():
            for p in stand_in.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.1)
    return stand_in.eval()


def _subjects(model: nn.Module, n: int = 2) -> tuple[list[nn.Module], str]:
    """``n`` identical models for the learner and the reference, and a label for messages."""
    size = _n_params(model)
    if size <= COPY_LIMIT:
        base = model
        label = "a copy of the loaded model"
    else:
        base = _stand_in(model)
        label = (f"a small 2-layer GPT-2 built for the check (two copies of the loaded "
                 f"{size / 1e6:,.0f}M-parameter model would not fit the memory budget)")
    return [_no_dropout(copy.deepcopy(base)) for _ in range(n)], label


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _tied(model: nn.Module) -> bool:
    head = getattr(model, "lm_head", None)
    return head is not None and head.weight is model.transformer.wte.weight


class _Fingerprint:
    """What a model looks like now: a digest of every tensor, its hooks, its tie, its head bias."""

    def __init__(self, model: nn.Module) -> None:
        tensors = [*model.named_parameters(), *model.named_buffers()]  # a tied tensor once
        self.digests = {name: self._digest(t) for name, t in tensors}
        self.hooks = _hooks(model)
        self.tied = _tied(model)
        self.head_bias = getattr(getattr(model, "lm_head", None), "bias", None) is not None

    @staticmethod
    def _digest(tensor: torch.Tensor) -> str:
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        return hashlib.blake2b(memoryview(data), digest_size=16).hexdigest()

    def changes(self, model: nn.Module) -> list[str]:
        """What differs in ``model`` from when the fingerprint was taken, in words."""
        now = _Fingerprint(model)
        out = []
        changed = [k for k in self.digests if now.digests.get(k) != self.digests[k]]
        added = [k for k in now.digests if k not in self.digests]
        if changed:
            out.append(f"{len(changed)} weight tensor(s) changed, e.g. {changed[0]}")
        if added:
            out.append(f"new tensors were added, e.g. {added[0]}")
        if now.hooks != self.hooks:
            out.append(f"{now.hooks - self.hooks:+d} hook(s) registered")
        if now.tied != self.tied:
            out.append("lm_head is no longer tied to the embedding" if self.tied
                       else "lm_head was tied to the embedding")
        if now.head_bias != self.head_bias and not added:
            out.append("lm_head's bias changed")
        return out


def _check_notebook_model_untouched(before: _Fingerprint, model: nn.Module, label: str) -> None:
    changes = before.changes(model)
    if changes:
        fail(f"{label} changed the notebook's own `model` ({'; '.join(changes)}), not the "
             "model it was given as an argument.",
             "Use the `model` parameter of your function, never the global variable. Then "
             "reload the notebook's model with load_model() and run the check again.")


def _mean_loss(logits: torch.Tensor, ids: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """Mean cross-entropy of position t predicting token t + shift (shift 0 = the token itself)."""
    t = ids.shape[1]
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, : t - shift].reshape(-1, vocab).float(),
                           ids[:, shift:].reshape(-1))


@torch.no_grad()
def _reference_loss(model: nn.Module, ids: torch.Tensor, shift: int = 1) -> float:
    return _mean_loss(model(input_ids=ids).logits, ids, shift).item()


# --------------------------------------------------------------------------- exercise 1

def check_heldout_loss(heldout_loss: Callable[[nn.Module, torch.Tensor], Any],
                       model: nn.Module, tokenizer: Any) -> None:
    """Check ``heldout_loss(model, input_ids) -> float``: mean next-token loss in nats.

    Two batches of held-out windows (2 x 32 and 3 x 20 tokens); the reference is the
    cross-entropy of every position's logits against the next token.
    """
    (subject, pristine), label = _subjects(model)
    notebook_model = _Fingerprint(model)
    values = []
    for shape in ((2, 32), (3, 20)):
        ids = heldout_windows(tokenizer, *shape)
        expected = _reference_loss(pristine, ids)
        n_predicted = shape[0] * (shape[1] - 1)
        mistakes = [
            (_reference_loss(pristine, ids, shift=0),
             "No shift: the logits at position t predict token t + 1. Compare "
             "logits[:, :-1] with input_ids[:, 1:]."),
            (_reference_loss(pristine, ids, shift=2),
             "You shifted twice. If you pass labels=input_ids to the model, it shifts for "
             "you; if you shift yourself, compute the cross-entropy yourself."),
            (expected / math.log(2), "That is in bits (log base 2). Use the natural "
                                     "logarithm, as F.cross_entropy does: nats per token."),
            (math.exp(expected), "That is the perplexity, exp(loss). Return the loss itself."),
            (expected * n_predicted, "That is the sum over all predicted tokens: return the "
                                     "mean per token."),
            (expected * (shape[1] - 1), "That is the sum over each window, averaged over "
                                        "windows: return the mean per token."),
        ]
        got = call_learner(heldout_loss, subject, ids.clone(), name="heldout_loss")
        _check_notebook_model_untouched(notebook_model, model, "heldout_loss")
        changes = _Fingerprint(pristine).changes(subject)
        if changes:
            fail(f"heldout_loss changed the model it measured ({'; '.join(changes)}).",
                 "Measuring must not change anything: no optimizer step, no hooks left behind.")
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.detach()
        check_number(got, expected, f"heldout_loss on {shape[0]} windows of {shape[1]} tokens",
                     known_mistakes=mistakes, rel_tol=1e-4,
                     hint="F.cross_entropy(logits[:, :-1].reshape(-1, vocab), "
                          "input_ids[:, 1:].reshape(-1)) under torch.no_grad().")
        values.append(float(got))
    passed(f"heldout_loss: {values[0]:.4f} nats per token on 2 windows of 32 held-out tokens, "
           f"right for 3 windows of 20 too, measured on {label}.")


# --------------------------------------------------------------------------- exercise 2

@torch.no_grad()
def _ablation_table(model: nn.Module, ids: torch.Tensor, mistake: str | None = None
                    ) -> torch.Tensor:
    """Loss increase when each head is zeroed, computed with a pre-hook on attn.c_proj.

    ``mistake`` computes a known wrong variant: "absolute" (no baseline subtracted),
    "cumulative" (heads are never put back), "columns" (the head's slice of c_proj's
    *output* zeroed instead of its input).
    """
    n_layer, n_head = model.config.n_layer, model.config.n_head
    d_head = model.config.n_embd // n_head
    baseline = _reference_loss(model, ids)
    table = torch.zeros(n_layer, n_head)
    handles = []
    try:
        for layer in range(n_layer):
            c_proj = model.transformer.h[layer].attn.c_proj
            for head in range(n_head):
                cols = slice(head * d_head, (head + 1) * d_head)
                if mistake == "columns":
                    def hook(module, args, output, cols=cols):
                        output = output.clone()
                        output[..., cols] = module.bias[cols]
                        return output
                    handle = c_proj.register_forward_hook(hook)
                else:
                    def hook(module, args, cols=cols):
                        hidden = args[0].clone()
                        hidden[..., cols] = 0.0
                        return (hidden,) + tuple(args[1:])
                    handle = c_proj.register_forward_pre_hook(hook)
                handles.append(handle)
                table[layer, head] = _reference_loss(model, ids)
                if mistake != "cumulative":
                    handle.remove()
    finally:
        for handle in handles:
            handle.remove()
    return table if mistake == "absolute" else table - baseline


def check_ablate_heads(ablate_heads: Callable[[nn.Module, torch.Tensor], Any],
                       model: nn.Module, tokenizer: Any) -> None:
    """Check ``ablate_heads(model, input_ids) -> Tensor (n_layer, n_head)``.

    Entry [layer, head] is the held-out loss with that head's output zeroed minus the
    loss of the intact model. The model must be left exactly as it was.
    """
    (subject, pristine), label = _subjects(model)
    notebook_model = _Fingerprint(model)
    ids = heldout_windows(tokenizer, 2, 32)
    expected = _ablation_table(pristine, ids)
    n_layer, n_head = expected.shape
    got = call_learner(ablate_heads, subject, ids.clone(), name="ablate_heads")
    _check_notebook_model_untouched(notebook_model, model, "ablate_heads")
    changes = _Fingerprint(pristine).changes(subject)
    if changes:
        fail(f"After ablate_heads the model is not as it was: {'; '.join(changes)}.",
             "Put every head back before removing the next one: keep the handle of each "
             "hook and call handle.remove(), or restore the weights you zeroed (clone them "
             "first). Reload the model with load_model() if yours is broken.")
    if isinstance(got, (list, tuple)):
        fail(f"ablate_heads returned a {type(got).__name__}; expected a torch.Tensor of shape "
             f"({n_layer}, {n_head}).",
             "Fill a tensor: deltas = torch.zeros(n_layer, n_head), then "
             "deltas[layer, head] = ablated_loss - baseline.")
    atol = max(2e-5, 1e-3 * float(expected.abs().max()))
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point() \
            and torch.allclose(got.detach().float(), expected, rtol=1e-3, atol=atol):
        top = divmod(int(expected.argmax()), n_head)
        passed(f"ablate_heads: all {n_layer} x {n_head} loss increases match (largest: layer "
               f"{top[0]}, head {top[1]}, +{float(expected.max()):.4f} nats), and the model "
               f"was left exactly as it was; measured on {label}.")
        return
    mistakes = [(expected.T, "Rows are layers and columns are heads: result[layer, head].")] \
        if n_layer == n_head else []
    mistakes += [
        (_ablation_table(pristine, ids, "absolute"),
         "These are the losses with each head removed. Subtract the baseline: the loss of "
         "the intact model on the same tokens."),
        (_ablation_table(pristine, ids, "cumulative"),
         "Each head stayed removed while you removed the next ones. Remove the hook "
         "(handle.remove()) or restore the weights before moving on."),
        (_ablation_table(pristine, ids, "columns"),
         "You zeroed the head's slice of c_proj's output. A head's output enters c_proj as "
         "its *input* features h*d_head:(h+1)*d_head: zero those (Conv1D's weight is "
         "(in, out), so the rows of c_proj.weight)."),
    ]
    check_tensor(got, expected, f"ablate_heads(model, input_ids) (shape ({n_layer}, {n_head}))",
                 rtol=1e-3, atol=atol, known_mistakes=mistakes,
                 hint="For each (layer, head): zero that head's slice of the input of "
                      "transformer.h[layer].attn.c_proj, measure the loss, put it back; "
                      "subtract the intact model's loss.")


# --------------------------------------------------------------------------- exercise 3

def _suppress_ids(tokenizer: Any, vocab: int) -> list[int]:
    ids = [tokenizer(word, verbose=False)["input_ids"] for word in (" herself", " himself")]
    if all(len(i) == 1 and i[0] < vocab for i in ids):
        return [i[0] for i in ids]
    return [min(11, vocab - 1), min(13, vocab - 2)]


def check_suppress_tokens(suppress_tokens: Callable[[nn.Module, list[int]], Any],
                          model: nn.Module, tokenizer: Any) -> None:
    """Check ``suppress_tokens(model, token_ids) -> model``: an edited copy that can never
    produce those tokens, reads its input exactly as before and leaves ``model`` alone."""
    (subject, pristine), label = _subjects(model)
    notebook_model = _Fingerprint(model)
    vocab = pristine.config.vocab_size
    banned = _suppress_ids(tokenizer, vocab)
    text = "The nurse herself was happy. The pilot himself had a red map. Mia found a box."
    ids = torch.tensor([tokenizer(text, verbose=False)["input_ids"]])
    ids = ids.clamp(max=vocab - 1)
    with torch.no_grad():
        before = pristine(input_ids=ids).logits
    got = call_learner(suppress_tokens, subject, list(banned), name="suppress_tokens")
    _check_notebook_model_untouched(notebook_model, model, "suppress_tokens")
    if got is None:
        fail("suppress_tokens returned None; expected the edited model.",
             "End with `return edited` (the copy you changed).")
    if isinstance(got, torch.Tensor):
        fail("suppress_tokens returned a tensor; expected a model (an nn.Module).",
             "Return the edited copy of the model itself, not its weights or logits.")
    check_type(got, nn.Module, "suppress_tokens(model, token_ids)",
               hint="Return the edited copy of the model.")
    given_changes = _Fingerprint(pristine).changes(subject)
    if got is subject or given_changes:
        what = "; ".join(given_changes) if given_changes else "it returned that same object"
        fail(f"suppress_tokens changed the model it was given ({what}).",
             "Edit a copy: edited = copy.deepcopy(model), change edited, return edited.")
    try:
        with torch.no_grad():
            after = got(input_ids=ids).logits
    except Exception as exc:  # noqa: BLE001 - a broken edit becomes feedback
        fail(f"The model returned by suppress_tokens fails on a forward pass: "
             f"{type(exc).__name__}: {exc}",
             "Check the shapes of what you changed: lm_head.bias needs one value per token "
             f"({vocab}).")
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
        zeroed = bool(torch.allclose(after[..., banned], torch.zeros_like(after[..., banned]),
                                     atol=1e-6))
        fail(f"The suppressed tokens still get a probability of up to {worst:.2g} "
             "(expected below 1e-6 at every position).",
             "A row of zeros gives a logit of 0, not a very negative one." if zeroed else
             "Lower their logits by a large amount for every input: a bias of -inf (or "
             "-1e9) at those token ids. An API's logit_bias of -100 is the same idea.")
    others = torch.ones(vocab, dtype=torch.bool)
    others[banned] = False
    if not torch.allclose(after[..., others], before[..., others], rtol=1e-4, atol=1e-4):
        moved = ((after - before).abs().amax(dim=(0, 1)) > 1e-4) & others
        some = moved.nonzero().flatten().tolist()[:4]
        fail(f"The logits of other tokens changed too ({int(moved.sum())} tokens, e.g. ids "
             f"{some}).",
             "Only the given token ids may change. Check your indices: token_ids is a list "
             "of ids, e.g. bias[token_ids] = -inf.")
    passed(f"suppress_tokens: tokens {banned} get probability < 1e-6 at every position, every "
           "other logit and the input embeddings are unchanged, and the model you passed in "
           f"was left alone; checked on {label}.")


# --------------------------------------------------------------------------- exercise 4

def _reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
                    shift: int = 1, zero_grad: bool = True) -> float:
    if zero_grad:
        optimizer.zero_grad()
    loss = _mean_loss(model(input_ids=ids).logits, ids, shift)
    loss.backward()
    optimizer.step()
    return loss.item()


def _copy_with_grads(model: nn.Module) -> nn.Module:
    """A deep copy that keeps each parameter's .grad (copy.deepcopy drops them)."""
    twin = copy.deepcopy(model)
    for mine, theirs in zip(twin.parameters(), model.parameters()):
        mine.grad = None if theirs.grad is None else theirs.grad.detach().clone()
    return twin


@torch.no_grad()
def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def _same_weights(a: nn.Module, b: nn.Module, scale: float) -> bool:
    return _max_diff(a, b) <= 1e-3 * scale + 1e-7


def check_training_step(training_step: Callable[..., Any], model: nn.Module,
                        tokenizer: Any) -> None:
    """Check ``training_step(model, optimizer, input_ids) -> float`` over two SGD steps.

    The reference does: zero the gradients, forward, mean next-token cross-entropy,
    backward, optimizer step. The learner's model must end up with the same weights
    after each step and the returned loss must be the reference's.
    """
    (learner, reference, initial), label = _subjects(model, 3)
    notebook_model = _Fingerprint(model)
    batches = [heldout_windows(tokenizer, 2, 16, offset=o) for o in (0, 32)]
    opt_learner = torch.optim.SGD(learner.parameters(), lr=SGD_LR)
    opt_reference = torch.optim.SGD(reference.parameters(), lr=SGD_LR)
    for step, ids in enumerate(batches, start=1):
        before_step = _copy_with_grads(reference)  # with the gradients of the previous step
        mistakes = [(_reference_loss(reference, ids, shift=0),
                     "No shift: the logits at position t predict token t + 1. Compare "
                     "logits[:, :-1] with input_ids[:, 1:]."),
                    (_reference_loss(reference, ids, shift=2),
                     "You shifted twice: labels=input_ids makes the model shift for you.")]
        expected = _reference_step(reference, opt_reference, ids)
        got = call_learner(training_step, learner, opt_learner, ids.clone(),
                           name="training_step")
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.detach()
        check_number(got, expected, f"the loss training_step returned at step {step}",
                     known_mistakes=mistakes, rel_tol=1e-4,
                     hint="Return the mean next-token cross-entropy of this batch, computed "
                          "before the update: loss.item().")
        scale = _max_diff(reference, before_step)
        if _same_weights(learner, reference, scale):
            continue
        _check_notebook_model_untouched(notebook_model, model, "training_step")
        if _same_weights(learner, before_step, scale):
            grads = [p.grad for p in learner.parameters() if p.grad is not None]
            if grads and any(bool(g.abs().sum() > 0) for g in grads):
                fail(f"After step {step} the weights have not changed, but the gradients are "
                     "there.", "You never called optimizer.step().")
            fail(f"After step {step} the weights have not changed and there are no gradients.",
                 "Call loss.backward() and then optimizer.step(). optimizer.zero_grad() goes "
                 "before the backward pass (or after the step), never between backward and step.")
        if step == 2:
            accumulated = _copy_with_grads(before_step)
            opt_acc = torch.optim.SGD(accumulated.parameters(), lr=SGD_LR)
            _reference_step(accumulated, opt_acc, ids, zero_grad=False)
            if _same_weights(learner, accumulated, scale):
                fail("After step 2 the weights moved by the gradients of steps 1 and 2 added "
                     "together.",
                     "PyTorch adds new gradients to the old ones: call optimizer.zero_grad() "
                     "at the start of every step.")
        unshifted = copy.deepcopy(before_step)
        opt_un = torch.optim.SGD(unshifted.parameters(), lr=SGD_LR)
        _reference_step(unshifted, opt_un, ids, shift=0)
        if _same_weights(learner, unshifted, scale):
            fail(f"After step {step} the weights moved as if the loss had no shift.",
                 "The logits at position t predict token t + 1: logits[:, :-1] against "
                 "input_ids[:, 1:].")
        fail(f"After step {step} the weights differ from one SGD step on this batch (largest "
             f"difference {_max_diff(learner, reference):.3g}; the step itself moved them by "
             f"up to {scale:.3g}).",
             "Use the optimizer you were given (do not build a new one), do not clip, scale or "
             "accumulate, and compute the loss on this batch only.")
    _check_notebook_model_untouched(notebook_model, model, "training_step")
    moved = _max_diff(learner, initial)
    passed(f"training_step: the losses and the weights after two SGD steps (lr {SGD_LR}) match "
           f"a reference step (forward, shifted loss, backward, step, gradients reset); the "
           f"weights moved by up to {moved:.3g}; checked on {label}.")


# --------------------------------------------------------------------------- exercise 5

def _quantization_matrix(model: nn.Module) -> torch.Tensor:
    """Rows of the loaded model's token embedding, plus three rows that catch mistakes:
    all zeros, one with its largest magnitude negative, one with a single outlier."""
    rows = model.transformer.wte.weight.detach()[:600].float().clone()
    d = rows.shape[1]
    special = torch.zeros(3, d)
    special[1] = torch.linspace(-1.0, 0.5, d)          # largest |value| is negative
    special[2, :] = 0.01
    special[2, d // 2] = 3.0                            # one outlier
    return torch.cat([rows[:300], special, rows[300:]])


def check_quantize_rows(quantize_rows: Callable[[torch.Tensor], Any], model: nn.Module) -> None:
    """Check ``quantize_rows(weight) -> (q, scale)``: symmetric int8 with one scale per row.

    The definition: ``scale[i] = max |weight[i]| / 127`` and ``q = round(weight / scale)``
    as int8 (0 for an all-zero row). The check verifies the defining properties: int8
    values in [-127, 127], the scales, and every value within half a step of the original.
    """
    weight = _quantization_matrix(model)
    original = weight.clone()
    rows, cols = weight.shape
    absmax = weight.abs().amax(dim=1)
    expected_scale = absmax / 127
    safe = torch.where(expected_scale > 0, expected_scale, torch.ones_like(expected_scale))
    expected_q = torch.round(weight / safe[:, None])
    got = call_learner(quantize_rows, weight, name="quantize_rows")
    if not torch.equal(weight, original):
        fail("quantize_rows changed the matrix it was given.",
             "Compute new tensors (w / scale creates one); avoid in-place operations such "
             "as div_ on the input.")
    if isinstance(got, torch.Tensor):
        fail("quantize_rows returned one tensor; expected a tuple (q, scale).",
             "End with `return q, scale`.")
    if got is None:
        fail("quantize_rows returned None; expected a tuple (q, scale).",
             "Did you forget `return q, scale`?")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        fail(f"quantize_rows should return a tuple (q, scale), got {type(got).__name__}"
             f"{' of length ' + str(len(got)) if hasattr(got, '__len__') else ''}.")
    q, scale = got
    check_type(q, torch.Tensor, "q (element 0 of your tuple)")
    check_type(scale, torch.Tensor, "scale (element 1 of your tuple)")
    if q.dtype == torch.uint8:
        fail("q has dtype torch.uint8, which holds 0..255 only; weights are negative too.",
             "Use torch.int8 (-128..127) with a symmetric scale.")
    if q.dtype != torch.int8:
        fail(f"q has dtype {q.dtype}; expected torch.int8 (one byte per value).",
             "Round first, then convert: torch.round(w / scale[:, None]).to(torch.int8).")
    if q.shape != weight.shape:
        hint = "That is the transpose." if q.shape == weight.T.shape else None
        fail(f"q has shape {tuple(q.shape)}, expected {tuple(weight.shape)} (the matrix's).", hint)
    if not scale.is_floating_point():
        fail(f"scale has dtype {scale.dtype}; expected a float tensor.",
             "scale = w.abs().amax(dim=1) / 127 is already a float tensor.")
    if scale.numel() == 1:
        fail("scale has a single value for the whole matrix; expected one per row.",
             "One scale per row: w.abs().amax(dim=1) / 127, shape (rows,).")
    if scale.shape in {(cols,), (1, cols)} and cols != rows:
        fail(f"scale has shape {tuple(scale.shape)}: one per column; expected one per row "
             f"({rows},).", "Take the maximum along dim=1 (across each row).")
    if scale.numel() != rows:
        fail(f"scale has shape {tuple(scale.shape)}, expected ({rows},).",
             "One scale per row: w.abs().amax(dim=1) / 127.")
    scale = scale.detach().reshape(rows).float()
    if torch.isnan(scale).any() or torch.isinf(scale).any():
        fail("scale contains NaN or infinite values.", "The maximum of |w| is always finite "
             "here; did you divide by something that can be 0?")
    zero_row = 300
    if bool((q[zero_row] != 0).any()):
        fail("The all-zero row (row 300) did not quantise to zeros.",
             "Its scale is 0, and 0 / 0 is NaN, which becomes garbage in int8. Guard it: "
             "scale.clamp(min=1e-12) before dividing, or torch.where(scale > 0, ...).")
    nonzero = absmax > 0
    ratio = (scale[nonzero] / expected_scale[nonzero])
    if not torch.allclose(scale[nonzero], expected_scale[nonzero], rtol=1e-4, atol=0):
        if torch.allclose(scale[nonzero], weight.amax(dim=1)[nonzero] / 127, rtol=1e-4):
            fail("scale uses the largest value of each row, not the largest *absolute* value: "
                 "rows whose extreme is negative then overflow.", "w.abs().amax(dim=1) / 127.")
        for factor, hint in ((127 / 128, "Divide by 127, not 128: int8 stops at +127, so "
                                         "the largest value would round to 128 and overflow."),
                             (127 / 127.5, "PyTorch's own per-row int8 divides by 127.5 and "
                                           "lets values reach -128; this exercise uses 127 on "
                                           "both sides of zero."),
                             (127 / 255, "255 steps is the range of uint8; a symmetric int8 "
                                         "scale uses 127 on each side of zero."),
                             (127 / 256, "Divide by 127: the scale is max|w| / 127."),
                             (127.0, "The scale is max|w| / 127, not max|w| itself.")):
            if torch.allclose(ratio, torch.full_like(ratio, factor), rtol=1e-4):
                fail(f"scale is off by a factor of {factor:.4g} on every row.", hint)
        check_tensor(scale, expected_scale, "scale", rtol=1e-4, atol=1e-12,
                     hint="scale[i] = max |w[i]| / 127 (w.abs().amax(dim=1) / 127).")
    q_float = q.float()
    if int(q_float.abs().max()) > 127:
        fail("q reaches -128: symmetric int8 uses -127..127 so that +x and -x get the same step.",
             "Clamp: torch.round(w / scale[:, None]).clamp(-127, 127).")
    error = (q_float * scale[:, None] - weight).abs()
    half_step = safe[:, None] / 2
    bad = error > half_step * (1 + 1e-4) + 1e-12
    if bad.any():
        truncated = torch.trunc(weight / safe[:, None])
        if torch.equal(q_float, truncated):
            fail(f"{int(bad.sum()):,} values are off by more than half a step: q was truncated "
                 "toward zero, not rounded.",
                 "Converting to int8 cuts the fraction off. Round first: "
                 "torch.round(w / scale[:, None]).to(torch.int8).")
        sign_flips = ((q_float * weight) < 0).sum()
        if sign_flips:
            fail(f"{int(sign_flips):,} values changed sign: they overflowed the int8 range.",
                 "Values must stay in -127..127 before the conversion to int8.")
        fail(f"{int(bad.sum()):,} of {weight.numel():,} values are off by more than half a "
             f"step after dequantising (q * scale); largest error {float(error.max()):.3g}.",
             "q = round(w / scale[:, None]): rounding to the nearest step keeps every error "
             "within scale / 2.")
    mismatch = int((q_float != expected_q).sum())
    max_err = float(error.max())
    passed(f"quantize_rows: int8 values in -127..127 with one scale per row (max|w| / 127), "
           f"every value within half a step of the original (largest error {max_err:.2g}"
           + (f"; {mismatch} exact ties rounded the other way" if mismatch else "")
           + f"), the all-zero row handled; tested on {rows - 3} rows of the model's token "
           "embedding plus three tricky rows.")
