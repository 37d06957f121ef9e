"""Generic, TA-style comparison helpers for exercise checks.

A check compares a learner's answer with a reference computed from the loaded model
or data. When they differ, it should say *what* is wrong and *why it probably is*,
the way a good teaching assistant would: "expected shape (768, 2304), got
(2304, 768): this is the transpose", "off by a factor of 2", "the difference is
exactly the bias: did you forget it?". Wrong types, ``None``, NaN and wrong shapes get
the same kind of one-paragraph message, never a traceback from deep inside torch.

Every failure raises :class:`ExerciseFailed` (an ``AssertionError``), so nbval,
pytest and nbgrader all count it as a failed test. Success prints one line that
starts with ``✓``.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import torch

__all__ = [
    "ExerciseFailed",
    "call_learner",
    "check_number",
    "check_tensor",
    "check_type",
    "fail",
    "passed",
]


class ExerciseFailed(AssertionError):
    """Raised by a check when the learner's answer is wrong; the message says why."""


def fail(problem: str, hint: str | None = None) -> NoReturn:
    """Raise :class:`ExerciseFailed` with a problem statement and an optional hint."""
    message = problem if hint is None else f"{problem}\nHint: {hint}"
    raise ExerciseFailed(message)


def passed(message: str) -> None:
    """Print the one-line success message of a check."""
    print(f"✓ {message}")


def call_learner(fn: Callable[..., Any], *args: Any, name: str | None = None,
                 hints: dict[type[BaseException], str] | None = None, **kwargs: Any) -> Any:
    """Call the learner's function and turn its crashes into readable feedback.

    ``NotImplementedError`` passes through unchanged: it means "not attempted yet".
    Any other exception is re-raised as :class:`ExerciseFailed` *from* the original,
    so the learner still sees their own traceback above our hint. ``hints`` maps an
    exception type to advice specific to this exercise.
    """
    label = name or getattr(fn, "__name__", "your function")
    if not callable(fn):
        fail(f"Expected a function for {label}, got {_describe(fn)}.",
             "Run the cell that defines the function, then this check again.")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - every learner crash becomes feedback
        hint = None
        for exc_type, advice in (hints or {}).items():
            if isinstance(exc, exc_type):
                hint = advice
                break
        message = f"{label} raised {type(exc).__name__}: {exc}"
        raise ExerciseFailed(message if hint is None else f"{message}\nHint: {hint}") from exc


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


def check_type(got: Any, expected_type: type | tuple[type, ...], name: str,
               hint: str | None = None) -> None:
    """Fail unless ``got`` is an instance of ``expected_type`` (with a None-specific hint)."""
    if isinstance(got, expected_type):
        return
    wanted = (expected_type.__name__ if isinstance(expected_type, type)
              else " or ".join(t.__name__ for t in expected_type))
    if got is None:
        fail(f"{name} is None, expected a {wanted}.",
             hint or "Did you forget the `return` statement?")
    fail(f"{name} should be a {wanted}, got {_describe(got)}.", hint)


# --------------------------------------------------------------------------- numbers

def _as_number(got: Any, name: str) -> float:
    if got is None:
        fail(f"{name} is None, expected a number.", "Did you forget the `return` statement?")
    if isinstance(got, bool):
        fail(f"{name} is a bool ({got}), expected a number.")
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            fail(f"{name} should be a single number, got {_describe(got)}.",
                 "Sum the tensor, or call .item() on a one-element tensor.")
        got = got.item()
    if hasattr(got, "item") and not isinstance(got, numbers.Number):  # numpy scalars
        got = got.item()
    if not isinstance(got, numbers.Real):
        fail(f"{name} should be a number, got {_describe(got)}.")
    value = float(got)
    if math.isnan(value) or math.isinf(value):
        fail(f"{name} is {value}.", "Something divided by zero or overflowed on the way.")
    return value


# Simple factors a learner typically ends up off by, with what usually causes them.
_FACTORS: tuple[tuple[float, str], ...] = (
    (2.0, "a factor of 2"), (0.5, "a factor of 1/2"),
    (4.0, "a factor of 4"), (0.25, "a factor of 1/4"),
    (8.0, "a factor of 8 (bits instead of bytes?)"), (0.125, "a factor of 1/8 (bits instead of bytes?)"),
    (3.0, "a factor of 3"), (1 / 3, "a factor of 1/3"),
    (1e3, "a factor of 1,000 (units?)"), (1e-3, "a factor of 1/1,000 (units?)"),
    (1e6, "a factor of 1,000,000 (units?)"), (1e-6, "a factor of 1/1,000,000 (units?)"),
    (2**20 / 1e6, "a factor of 1.048576: MB (10^6 bytes) versus MiB (2^20 bytes)"),
    (1e6 / 2**20, "a factor of 1/1.048576: MiB (2^20 bytes) versus MB (10^6 bytes)"),
    (-1.0, "the sign"),
)


def _fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e18:
        return f"{int(value):,}"
    return f"{value:,.6g}"


def check_number(got: Any, expected: float, name: str,
                 known_mistakes: Sequence[tuple[float, str]] = (),
                 rel_tol: float = 1e-9, abs_tol: float = 0.0,
                 hint: str | None = None, integer: bool = False) -> None:
    """Compare a learner's number with the reference, naming the likely mistake.

    ``known_mistakes`` are ``(value, hint)`` pairs: values the reference computation
    gives when one specific mistake is made (computed from the same config or
    model, never typed in). If the learner's number equals one of them, that hint
    is shown. Otherwise a constant factor (x2, x1/2, bits/bytes, MB/MiB...) is
    recognised, and failing that the difference is reported.
    """
    value = _as_number(got, name)
    if integer and not float(value).is_integer():
        fail(f"{name} should be a whole number, got {value!r}.",
             "Parameter counts are integers: avoid `/`, use `//` or int().")
    if math.isclose(value, expected, rel_tol=rel_tol, abs_tol=abs_tol):
        return
    head = f"{name}: expected {_fmt(expected)}, got {_fmt(value)}"
    for mistake_value, mistake_hint in known_mistakes:
        if math.isclose(value, mistake_value, rel_tol=rel_tol, abs_tol=abs_tol):
            fail(f"{head} (off by {_fmt(value - expected)}).", mistake_hint)
    if expected != 0:
        ratio = value / expected
        for factor, label in _FACTORS:
            if math.isclose(ratio, factor, rel_tol=max(rel_tol, 1e-6)):
                fail(f"{head}: off by {label}.", hint)
    diff = value - expected
    pct = f" ({diff / expected:+.2%})" if expected else ""
    fail(f"{head}: off by {_fmt(diff)}{pct}.", hint)


# --------------------------------------------------------------------------- tensors

def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def check_tensor(got: Any, expected: torch.Tensor, name: str, *,
                 rtol: float = 1e-4, atol: float = 1e-5,
                 bias: torch.Tensor | None = None,
                 known_mistakes: Sequence[tuple[torch.Tensor, str]] = (),
                 hint: str | None = None) -> None:
    """Compare a learner's tensor with the reference and explain any difference.

    Detects, in order: ``None`` or a non-tensor, a non-floating dtype, NaN/inf,
    a wrong shape (including "these are the right values with the axes in the wrong
    order", e.g. the transpose), then for same-shaped tensors: a known mistake
    (``(tensor, hint)`` pairs computed by the caller), the transpose, a constant
    factor, a missing or doubled ``bias`` and finally the fraction of values that
    match.
    """
    if got is None:
        fail(f"{name} is None, expected a tensor of shape {tuple(expected.shape)}.",
             "Did you forget the `return` statement?")
    if isinstance(got, torch.nn.Parameter):
        got = got.data
    if not isinstance(got, torch.Tensor):
        type_name = type(got).__module__.split(".")[0] + "." + type(got).__name__
        extra = ""
        if type_name.startswith("numpy."):
            extra = " Convert with torch.from_numpy(...)."
        fail(f"{name} should be a torch.Tensor, got {type_name}.{extra}", hint)
    got = got.detach()
    expected = expected.detach()
    if got.is_floating_point() != expected.is_floating_point():
        fail(f"{name} has dtype {got.dtype}, expected {expected.dtype}.",
             hint or "Integer tensors usually come from torch.tensor([...]) of ints "
                     "or from an argmax; keep the model's float values.")
    if got.is_floating_point():
        got = got.to(expected.dtype)
        n_nan = int(torch.isnan(got).sum())
        n_inf = int(torch.isinf(got).sum())
        if n_nan or n_inf:
            fail(f"{name} contains {n_nan:,} NaN and {n_inf:,} infinite values "
                 f"(out of {got.numel():,}).",
                 hint or "Look for torch.empty(...) left unfilled, or a division by zero.")
    if got.shape != expected.shape:
        _explain_shape(got, expected, name, rtol, atol, hint)
    if _close(got, expected, rtol, atol):
        return
    for alternative, mistake_hint in known_mistakes:
        if _close(got, alternative.to(got.dtype), rtol, atol):
            fail(f"{name} has the right shape {tuple(expected.shape)} but the wrong values.",
                 mistake_hint)
    if expected.dim() == 2 and expected.shape[0] == expected.shape[1] \
            and _close(got, expected.T, rtol, atol):
        fail(f"{name} is the transpose of the expected matrix.",
             hint or "Conv1D stores its weight as (in, out); nn.Linear as (out, in).")
    if got.is_floating_point():
        denom = float((expected * expected).sum())
        if denom > 0:
            factor = float((got * expected).sum()) / denom
            if not math.isclose(factor, 1.0, rel_tol=1e-3) and abs(factor) > 1e-6 \
                    and _close(got, expected * factor, rtol, atol):
                fail(f"{name} is the expected tensor multiplied by {factor:.4g}.",
                     hint or "Look for a factor you applied twice, or one you forgot.")
        if bias is not None:
            b = bias.detach().to(got.dtype)
            try:
                if _close(expected - got, torch.broadcast_to(b, got.shape), rtol, atol):
                    fail(f"{name} differs from the expected values by exactly the bias.",
                         "You forgot to add the bias.")
                if _close(got - expected, torch.broadcast_to(b, got.shape), rtol, atol):
                    fail(f"{name} differs from the expected values by exactly the bias.",
                         "You added the bias twice.")
            except RuntimeError:  # bias not broadcastable: nothing to learn from it
                pass
    match = torch.isclose(got, expected, rtol=rtol, atol=atol)
    frac = float(match.float().mean())
    max_diff = float((got - expected).abs().max()) if got.is_floating_point() else float("nan")
    fail(f"{name} has the right shape {tuple(expected.shape)}, but only {frac:.0%} of "
         f"its values match (largest difference {max_diff:.3g}).", hint)


def _explain_shape(got: torch.Tensor, expected: torch.Tensor, name: str,
                   rtol: float, atol: float, hint: str | None) -> NoReturn:
    """Fail with a message about a shape mismatch, spotting permuted axes."""
    head = f"{name} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if got.dim() == expected.dim() and sorted(got.shape) == sorted(expected.shape) \
            and got.dim() <= 5:
        for perm in itertools.permutations(range(got.dim())):
            if perm == tuple(range(got.dim())):
                continue
            candidate = got.permute(perm)
            if _close(candidate, expected, rtol, atol):
                if got.dim() == 2:
                    fail(f"{head}: this is the transpose of the right answer.",
                         hint or "Conv1D stores its weight as (in, out); nn.Linear as "
                                 "(out, in). Transpose with .T.")
                fail(f"{head}: the values are right but the axes are in the wrong "
                     f"order; .permute{perm} of your tensor would be correct.",
                     hint or "Check the order of your transpose/permute calls.")
    if got.numel() == expected.numel():
        fail(f"{head}: same number of elements, different layout.",
             hint or "Check your view/reshape and where you transpose.")
    fail(f"{head}.", hint)
