"""The one layer between the exercise checks and the learner's code.

Checks call the learner through :func:`call_learner`, take answers apart with :func:`unpack`
and compare with :func:`check_number` or :func:`check_tensor`. A wrong answer raises
:class:`ExerciseFailed` (an ``AssertionError``, so nbval, pytest and nbgrader count it) whose
message names the usual mistake that gives exactly that answer; those answers come from the
reference with one setting changed (:func:`mistakes_from`), computed only after a failure.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import torch
from torch import nn

__all__ = ["ExerciseFailed", "Mistakes", "ModelState", "Refused", "as_number", "call_learner",
           "check_number", "check_tensor", "check_type", "close", "close_number", "data_rows", "expect_raises", "fail",
           "mistakes_from", "passed", "refusing", "second_gpt2", "unpack", "unpack_numbers"]

#: (wrong answer, hint) pairs, or a function that computes them when they are needed.
Mistakes = Iterable[tuple[Any, str]] | Callable[[], Iterable[tuple[Any, str]]]


class ExerciseFailed(AssertionError):
    """Raised by a check when the learner's answer is wrong; the message says why."""


def fail(problem: str, hint: str | None = None) -> NoReturn:
    """Raise :class:`ExerciseFailed` with a problem statement and an optional hint."""
    message = problem if hint is None else f"{problem}\nHint: {hint}"
    raise ExerciseFailed(message)


def passed(message: str) -> None:
    """Print the one-line success message of a check."""
    print(f"✓ {message}")


def data_rows(name: str) -> list[dict[str, str]]:
    """The rows of ``data/<name>``, a CSV file, as dicts."""
    from glassbox.paths import DATA_DIR

    with (DATA_DIR / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


def _describe(value: Any) -> str:
    """A short description of a value for messages: its type and, if small, its repr."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _digest(tensor: torch.Tensor) -> tuple[Any, ...]:
    """Address, dtype, shape and two sums: cheap at GPT-2 scale (a hash of every byte is 8x slower)."""
    t = tensor.detach()
    flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
    sums = (float(flat.sum()), float(torch.dot(flat, flat))) if t.is_floating_point() else \
        (int(flat.sum()),)
    return (t.data_ptr(), t.dtype, tuple(t.shape), *sums)


class ModelState:
    """What calling the learner must not change about a model: weights, gradients, mode, hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.training, self.hooks = model.training, _hooks(model)
        self.grads = {name for name, p in model.named_parameters() if p.grad is not None}
        self.digests = {name: _digest(t) for name, t in [*model.named_parameters(), *model.named_buffers()]}

    def problems(self, model: nn.Module) -> list[tuple[str, str]]:
        """(what changed, how to avoid it) for every way ``model`` differs from before."""
        out = []
        changed = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
                   if self.digests.get(n) != _digest(t)]
        if changed:
            out.append((f"changed {len(changed)} of the model's weight tensors in place "
                        f"(e.g. {changed[0]})",
                        "Compute new tensors instead of writing into the model's (no +=, .add_(), .copy_() or [...] = "
                        "on its weights); then reload the model with load_model() and run the check again."))
        grads = [n for n, p in model.named_parameters() if p.grad is not None and n not in self.grads]
        if grads:
            out.append((f"left gradients on {len(grads)} of the model's parameters "
                        f"(e.g. {grads[0]}.grad)",
                        "This exercise needs no gradients: compute under torch.no_grad(), and never call .backward() "
                        "here (or clear them: model.zero_grad(set_to_none=True))."))
        if model.training != self.training:
            mode = "training" if model.training else "evaluation"
            out.append((f"left the model in {mode} mode (model.training is {model.training})",
                        "Leave the mode as you found it: if you call model.train(), call "
                        "model.eval() before returning (dropout is on in training mode)."))
        if _hooks(model) != self.hooks:
            out.append((f"left {_hooks(model) - self.hooks:+d} hook(s) registered on it",
                        "Keep the handle of every hook you register and call handle.remove()."))
        return out


def call_learner(fn: Callable[..., Any], *args: Any, name: str | None = None,
                 hints: Mapping[type[BaseException], str | Callable[[BaseException], str]] | None = None,
                 protect: Iterable[torch.Tensor] | Mapping[str, torch.Tensor] = (),
                 model: nn.Module | None = None, **kwargs: Any) -> Any:
    """Call the learner's function, turn its crashes into feedback, and verify its inputs."""
    label = name or getattr(fn, "__name__", "your function")
    if not callable(fn):
        fail(f"Expected a function for {label}, got {_describe(fn)}.",
             "Run the cell that defines the function, then this check again.")
    named = dict(protect) if isinstance(protect, Mapping) else {
        f"input tensor {i + 1}": t for i, t in enumerate(protect)}
    before = {key: t.detach().clone() for key, t in named.items()}
    state = ModelState(model) if model is not None else None
    try:
        result = fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - every learner crash becomes feedback
        hint = next((advice(exc) if callable(advice) else advice
                     for exc_type, advice in (hints or {}).items() if isinstance(exc, exc_type)), None)
        message = f"{label} raised {type(exc).__name__}: {exc}"
        raise ExerciseFailed(message if hint is None else f"{message}\nHint: {hint}") from exc
    for key, t in named.items():
        if not torch.equal(t.detach(), before[key]):
            with torch.no_grad():
                t.copy_(before[key])
            fail(f"{label} changed its {key} in place; the check has put the original values "
                 "back.", "Compute new tensors (x - mean, not x -= mean; no .sub_(), .mul_() or "
                          "[...] = ... on the inputs).")
    problems = state.problems(model) if state is not None else []
    if problems:
        fail(f"{label} {'; it also '.join(what for what, _ in problems)}.", " ".join(how for _, how in problems))
    return result


class Refused(RuntimeError):
    """Raised when the learner's function uses what the exercise asks it to compute itself."""


@contextlib.contextmanager
def refusing(targets: Iterable[tuple[Any, str]], what: str) -> Iterator[None]:
    """While the learner's function runs, each ``(owner, attribute)`` raises :class:`Refused`."""
    targets = list(targets)
    originals = [getattr(owner, name) for owner, name in targets]

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise Refused(f"{what} ran inside your function")

    for owner, name in targets:
        setattr(owner, name, refuse)
    try:
        yield
    finally:
        for (owner, name), original in zip(targets, originals):
            setattr(owner, name, original)


def expect_raises(fn: Callable[..., Any], *args: Any, exception: type[BaseException],
                  name: str, why: str, **kwargs: Any) -> BaseException:
    """Call the learner's function on an input it must refuse; return the exception raised."""
    try:
        got = fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except exception as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - any other crash becomes feedback
        raise ExerciseFailed(f"{name} raised {type(exc).__name__}: {exc}; expected "
                             f"{exception.__name__}.\nHint: {why}") from exc
    fail(f"{name} returned {_describe(got)}; expected it to raise {exception.__name__}.", why)


def unpack(got: Any, parts: Sequence[str], name: str, hint: str | None = None) -> tuple[Any, ...]:
    """The learner's tuple of named ``parts``, or a failure naming what is missing or extra."""
    wanted = f"({', '.join(parts)})"
    hint = hint or f"End with `return {', '.join(parts)}`."
    if got is None:
        fail(f"{name} returned None; expected a tuple {wanted}.", hint)
    if isinstance(got, torch.Tensor) or not isinstance(got, (tuple, list)):
        fail(f"{name} returned one value, {_describe(got)}; expected a tuple {wanted}.", hint)
    if len(got) < len(parts):
        fail(f"{name} returned {len(got)} value(s); expected {len(parts)}, {wanted}: "
             f"{', '.join(parts[len(got):])} is missing.", hint)
    if len(got) > len(parts):
        fail(f"{name} returned {len(got)} values; expected {len(parts)}, {wanted}: "
             f"{len(got) - len(parts)} extra.", hint)
    return tuple(got)


def unpack_numbers(got: Any, parts: Sequence[str], name: str, unpack_hint: str | None = None,
                   **number: Any) -> tuple[float, ...]:
    """The learner's tuple of named numbers: :func:`unpack`, then :func:`as_number` on each part."""
    values = unpack(got, parts, name, unpack_hint)
    return tuple(as_number(value, f"{part} of {name}", **number) for part, value in zip(parts, values))


def check_type(got: Any, expected_type: type | tuple[type, ...], name: str, hint: str | None = None) -> None:
    """Fail unless ``got`` is an instance of ``expected_type`` (with a None-specific hint)."""
    if isinstance(got, expected_type):
        return
    wanted = (expected_type.__name__ if isinstance(expected_type, type)
              else " or ".join(t.__name__ for t in expected_type))
    if got is None:
        fail(f"{name} is None, expected a {wanted}.", hint or "Did you forget the `return` statement?")
    fail(f"{name} should be a {wanted}, got {_describe(got)}.", hint)


def second_gpt2(like: nn.Module, seed: int = 11, vocab_size: int | None = None) -> nn.Module:
    """A small random GPT-2 whose sizes all differ from ``like``'s (vocabulary: ``like``'s by default).

    A learner's function run on it fails with the loaded model's numbers written in (heads,
    head size, width, layers, epsilon). Its epsilon (1e-2) is close to its activations'
    variance, so a wrong epsilon shows; biases are not zero. The caller's RNG is left alone.
    Each call returns a fresh copy.
    """
    c = like.config
    return copy.deepcopy(_second_gpt2(c.n_head, c.n_embd, c.n_layer, c.layer_norm_epsilon,
                                      vocab_size or c.vocab_size, c.bos_token_id, c.eos_token_id, seed))


@functools.lru_cache(maxsize=8)
def _second_gpt2(n_head: int, n_embd: int, n_layer: int, eps: float, vocab_size: int,
                 bos: int | None, eos: int | None, seed: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    heads = 6 if n_head != 6 else 3
    d_head = 8 if n_embd // n_head != 8 else 12
    config = GPT2Config(n_layer=2 if n_layer != 2 else 3, n_head=heads, n_embd=heads * d_head,
                        vocab_size=vocab_size, n_positions=64,
                        layer_norm_epsilon=1e-2 if not math.isclose(eps, 1e-2) else 1e-3,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos, eos_token_id=eos)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(1.0 if ".ln_" in name and name.endswith("weight") else 0.0, 0.1)
    return model


# --------------------------------------------------------------------------- the usual mistakes

def mistakes_from(compute: Callable[..., Any], settings: Iterable[tuple[Any, str]]
                  ) -> Callable[[], Iterable[tuple[Any, str]]]:
    """The answers the usual mistakes give, computed lazily from the reference."""
    def generate() -> Iterable[tuple[Any, str]]:
        for setting, hint in settings:
            try:
                with torch.no_grad():
                    value = compute(**setting) if isinstance(setting, dict) else compute(setting)
            except (RuntimeError, ValueError, ZeroDivisionError):
                continue
            yield value, hint
    return generate


def _fail_with_mistakes(head: str, mistakes: Mistakes, is_match: Callable[[Any], bool],
                        distance: Callable[[Any], float] | None = None) -> None:
    """Fail naming the mistake(s) whose answer matches, the closest to the learner's answer first
    (by ``distance``, when given); return if there are none."""
    generated = mistakes() if callable(mistakes) else mistakes
    matches = [(value, hint) for value, hint in generated if is_match(value)]
    if distance is not None:
        matches.sort(key=lambda match: distance(match[0]))  # stable: ties keep the listed order
    hints = list(dict.fromkeys(hint for _, hint in matches))
    if len(hints) == 1:
        fail(f"{head} It matches a usual mistake.", hints[0])
    if hints:  # on this input the numbers cannot tell these mistakes apart
        fail(f"{head} It matches {len(hints)} usual mistakes, which give the same answer here.",
             " Or: ".join(hints[:3]))


# --------------------------------------------------------------------------- numbers

def as_number(got: Any, name: str, *, integer: bool = False, hint: str | None = None) -> float:
    """The learner's value as a float (a whole number if ``integer``), or a clear failure."""
    if got is None:
        fail(f"{name} is None, expected a number.", "Did you forget the `return` statement?")
    if isinstance(got, bool):
        fail(f"{name} is a bool ({got}), expected a number.")
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            fail(f"{name} should be a single number, got {_describe(got)}.",
                 hint or "Sum the tensor, or call .item() on a one-element tensor.")
        got = got.item()
    if hasattr(got, "item") and not isinstance(got, numbers.Number):  # numpy scalars
        got = got.item()
    if isinstance(got, str):
        fail(f"{name} should be a number, got the text {got[:40]!r}.", "Convert with float(...) or int(...).")
    if not isinstance(got, numbers.Real):
        fail(f"{name} should be a number, got {_describe(got)}.")
    value = float(got)
    if math.isnan(value) or math.isinf(value):
        fail(f"{name} is {value}.", "Something divided by zero or overflowed on the way.")
    if integer and not value.is_integer():
        fail(f"{name} should be a whole number, got {value!r}.",
             hint or "A count is a whole number: avoid `/`, use `//` or int().")
    return value


# Simple factors a learner is typically off by (each with its reciprocal), and their cause.
_FACTORS = [pair for factor, label, why in (
    (2.0, "2", ""), (4.0, "4", ""), (8.0, "8", " (bits instead of bytes?)"), (3.0, "3", ""),
    (1e3, "1,000", " (units?)"), (1e6, "1,000,000", " (units?)"),
    (2**20 / 1e6, "1.048576", ": MB (10^6 bytes) versus MiB (2^20 bytes)"))
    for pair in ((factor, f"a factor of {label}{why}"), (1 / factor, f"a factor of 1/{label}" + (
        why if ":" not in why else ": MiB (2^20 bytes) versus MB (10^6 bytes)")))]
_FACTORS.append((-1.0, "the sign"))


def _fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e18:
        return f"{int(value):,}"
    return f"{value:,.6g}"


def check_number(got: Any, expected: float, name: str, known_mistakes: Mistakes = (),
                 rel_tol: float = 1e-9, abs_tol: float = 0.0, hint: str | None = None, integer: bool = False) -> float:
    """Compare a learner's number with the reference, naming the likely mistake; return it."""
    value = as_number(got, name, integer=integer)
    if math.isclose(value, expected, rel_tol=rel_tol, abs_tol=abs_tol):
        return value
    head = f"{name}: expected {_fmt(expected)}, got {_fmt(value)}"
    _fail_with_mistakes(f"{head} (off by {_fmt(value - expected)}).", known_mistakes,
                        lambda m: math.isclose(value, float(m), rel_tol=rel_tol, abs_tol=abs_tol),
                        lambda m: abs(value - float(m)))
    for factor, label in _FACTORS if expected else ():
        if math.isclose(value / expected, factor, rel_tol=max(rel_tol, 1e-6)):
            fail(f"{head}: off by {label}.", hint)
    pct = f" ({(value - expected) / expected:+.2%})" if expected else ""
    fail(f"{head}: off by {_fmt(value - expected)}{pct}.", hint)


# --------------------------------------------------------------------------- tensors

def close_number(a: float, b: float, tol: float = 1e-6) -> bool:
    """True if two numbers agree to ``tol`` (absolute) or to one part in a million (relative)."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=tol)


def close(got: Any, expected: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """True if ``got`` is a tensor of ``expected``'s shape and kind whose values match it."""
    if isinstance(got, nn.Parameter):
        got = got.data
    if not isinstance(got, torch.Tensor) or got.is_floating_point() != expected.is_floating_point():
        return False
    got = got.detach()
    return _close(got.to(expected.dtype) if got.is_floating_point() else got, expected.detach(), rtol, atol)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    """Same shape and |a - b| <= atol + rtol |b|; NaN equals NaN (torch.allclose is slow here)."""
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b.to(a.dtype)))
    ok = (a - b).abs() <= atol + rtol * b.abs()
    ok |= torch.isnan(a) & torch.isnan(b)
    ok |= torch.isinf(a) & (a == b)
    return bool(ok.all())


def _percent(share: float) -> str:
    """A share as a percentage that never rounds a mismatch up to 100% (or a match down to 0%)."""
    if 0.99 < share < 1.0:
        return f"{math.floor(share * 10_000) / 100:.2f}%"
    if 0.0 < share < 0.01:
        return f"{math.ceil(share * 10_000) / 100:.2f}%"
    return f"{share:.0%}"


def _fail_if_not_finite(got: torch.Tensor, name: str, hint: str | None) -> None:
    n_nan, n_inf = int(torch.isnan(got).sum()), int(torch.isinf(got).sum())
    if n_nan or n_inf:
        fail(f"{name} contains {n_nan:,} NaN and {n_inf:,} infinite values "
             f"(out of {got.numel():,}).", hint or "Look for torch.empty(...) left unfilled, or a division by zero.")


def check_tensor(got: Any, expected: torch.Tensor, name: str, *, rtol: float = 1e-4, atol: float = 1e-5,
                 bias: torch.Tensor | None = None, known_mistakes: Mistakes = (),
                 hint: str | None = None) -> torch.Tensor:
    """Compare a learner's tensor with the reference and explain any difference; return it."""
    if got is None:
        fail(f"{name} is None, expected a tensor of shape {tuple(expected.shape)}.",
             "Did you forget the `return` statement?")
    if isinstance(got, nn.Parameter):
        got = got.data
    if not isinstance(got, torch.Tensor):
        type_name = type(got).__module__.split(".")[0] + "." + type(got).__name__
        extra = " Convert with torch.from_numpy(...)." if type_name.startswith("numpy.") else ""
        fail(f"{name} should be a torch.Tensor, got {type_name}.{extra}", hint)
    got, expected = got.detach(), expected.detach()
    if got.is_floating_point() != expected.is_floating_point():
        fail(f"{name} has dtype {got.dtype}, expected {expected.dtype}.",
             hint or "Integer tensors usually come from torch.tensor([...]) of ints "
                     "or from an argmax; keep the model's float values.")
    if got.is_floating_point():
        got = got.to(expected.dtype)
    if got.shape == expected.shape and _close(got, expected, rtol, atol):
        return got
    if got.shape != expected.shape:
        if got.is_floating_point():
            _fail_if_not_finite(got, name, hint)
        _explain_shape(got, expected, name, rtol, atol, hint)
    if not got.is_floating_point():
        frac = float((got == expected).float().mean())
        fail(f"{name} has the right shape {tuple(expected.shape)}, but only {_percent(frac)} "
             "of its values are right.", hint)
    diff = (got - expected).abs()
    finite = diff[torch.isfinite(diff)]
    share = float(torch.isclose(got, expected, rtol=rtol, atol=atol).float().mean())
    largest = float(finite.max()) if finite.numel() else float("nan")
    head = (f"{name} has the right shape {tuple(expected.shape)}, but only {_percent(share)} of "
            f"its values match the reference (largest difference {largest:.3g}).")
    _fail_with_mistakes(head, known_mistakes, lambda m: isinstance(m, torch.Tensor)
                        and _close(got, m.detach().to(got.dtype), rtol, atol),
                        lambda m: float((got - m.detach().to(got.dtype)).abs().nan_to_num(math.inf).max()))
    _fail_if_not_finite(got, name, hint)
    if expected.dim() == 2 and expected.shape[0] == expected.shape[1] \
            and _close(got, expected.T, rtol, atol):
        fail(f"{name} is the transpose of the expected matrix.",
             hint or "Conv1D stores its weight as (in, out); nn.Linear as (out, in).")
    denom = float((expected * expected).sum())
    if denom > 0:
        factor = float((got * expected).sum()) / denom
        if not math.isclose(factor, 1.0, rel_tol=1e-3) and abs(factor) > 1e-6 \
                and _close(got, expected * factor, rtol, atol):
            fail(f"{name} is the expected tensor multiplied by {factor:.4g}.",
                 hint or "Look for a factor you applied twice, or one you forgot.")
    if bias is not None:
        b = bias.detach().to(got.dtype)
        with contextlib.suppress(RuntimeError):  # a bias that does not broadcast tells nothing
            for diff, advice in ((expected - got, "You forgot to add the bias."),
                                 (got - expected, "You added the bias twice.")):
                if _close(diff, torch.broadcast_to(b, got.shape), rtol, atol):
                    fail(f"{name} differs from the expected values by exactly the bias.", advice)
    fail(head, hint)


def _explain_shape(got: torch.Tensor, expected: torch.Tensor, name: str,
                   rtol: float, atol: float, hint: str | None) -> NoReturn:
    """Fail with a message about a shape mismatch, spotting extra axes and permuted axes."""
    shape, want = tuple(got.shape), tuple(expected.shape)
    head = f"{name} has shape {shape}, expected {want}"
    if len(shape) == len(want) + 1 and shape[0] == 1 and shape[1:] == want:
        fail(f"{head}: an extra leading axis of size 1 (a batch axis).",
             "Work on one sequence without a batch axis, or return result[0] (or .squeeze(0)).")
    if len(want) >= 2 and len(shape) == len(want) - 1 and shape == want[1:]:
        fail(f"{head}: the first axis, one entry per position, is missing, as if you kept only "
             "one position.", "Return the values for every position, e.g. don't index [-1] at the end.")
    if got.dim() == expected.dim() and sorted(shape) == sorted(want) and got.dim() <= 5:
        for perm in itertools.permutations(range(got.dim())):
            if perm != tuple(range(got.dim())) and _close(got.permute(perm), expected, rtol, atol):
                if got.dim() == 2:
                    fail(f"{head}: this is the transpose of the right answer.",
                         hint or "Conv1D stores its weight as (in, out); nn.Linear as (out, in). Transpose with .T.")
                fail(f"{head}: the values are right but the axes are in the wrong "
                     f"order; .permute{perm} of your tensor would be correct.",
                     hint or "Check the order of your transpose/permute calls.")
    if got.numel() == expected.numel():
        fail(f"{head}: same number of elements, different layout.",
             hint or "Check your view/reshape and where you transpose.")
    fail(f"{head}.", hint)
