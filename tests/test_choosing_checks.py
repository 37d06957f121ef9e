"""Chapter 10's checks: right answers pass, plausible wrong answers fail with their hint.

Each test calls a check function directly with a deliberately wrong answer and asserts on
the message the learner would see. The pickle check is also tested against an answer that
unpickles the data: the payload then writes its note, and the check must say so.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import io
import pickle
import pickletools
from fractions import Fraction
from pathlib import Path

import pytest

from glassbox.exercise_checks.choosing import (
    check_break_even_tokens_per_month,
    check_find_globals,
    check_sha256_of_file,
    check_usd_per_million_tokens,
    reference_globals,
)
from glassbox.exercise_checks.feedback import ExerciseFailed


def fails_with(check, answer, match: str) -> str:
    """Run a check that must fail; return its message after asserting it contains `match`."""
    with pytest.raises(ExerciseFailed) as info:
        check(answer)
    message = str(info.value)
    assert match.lower() in message.lower(), message
    return message


def passes(check, answer, capsys) -> str:
    check(answer)
    out = capsys.readouterr().out
    assert out.startswith("✓") and out.count("\n") == 1, out
    return out


# ----------------------------------------------------------------- usd_per_million_tokens

def cost_ok(tps, usd_per_hour):
    return usd_per_hour / (tps * 3600) * 1e6


def test_cost_accepts_right_answer(capsys) -> None:
    out = passes(check_usd_per_million_tokens, cost_ok, capsys)
    assert "H100 PCIe" in out and "$10.20" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda tps, usd: usd / tps * 1e6, "3,600 seconds"),
    (lambda tps, usd: usd / (tps * 60) * 1e6, "not 60"),
    (lambda tps, usd: usd / (tps * 3600), "multiply by 1,000,000"),
    (lambda tps, usd: tps * 3600 / usd / 1e6, "upside down"),
    (lambda tps, usd: tps * 3600 / usd, "tokens per dollar"),
    (lambda tps, usd: usd * tps * 3600 / 1e6, "do not multiply"),
    (lambda tps, usd: cost_ok(tps, usd) * 1.1, "off by"),
])
def test_cost_known_mistakes(wrong, hint) -> None:
    fails_with(check_usd_per_million_tokens, wrong, hint)


@pytest.mark.parametrize("answer, hint", [
    (None, "return"), (float("nan"), "nan"), ("10.20", "should be a number"), (True, "bool"),
])
def test_cost_bad_types(answer, hint) -> None:
    fails_with(check_usd_per_million_tokens, lambda tps, usd: answer, hint)


def test_cost_swapped_arguments_crash_gives_feedback() -> None:
    def swapped(usd_per_hour, tokens_per_second):  # arguments in the wrong order
        return usd_per_hour / (tokens_per_second * 3600) * 1e6
    fails_with(check_usd_per_million_tokens, swapped, "expected")


def test_cost_not_implemented_passes_through() -> None:
    def stub(tps, usd):
        raise NotImplementedError
    with pytest.raises(NotImplementedError):
        check_usd_per_million_tokens(stub)


# ----------------------------------------------------------------- break_even_tokens_per_month

def break_even_ok(gpu_usd_per_hour, api_usd_per_million, hours_per_month=730):
    return gpu_usd_per_hour * hours_per_month / (api_usd_per_million / 1e6)


def test_break_even_accepts_right_answer(capsys) -> None:
    out = passes(check_break_even_tokens_per_month, break_even_ok, capsys)
    assert "million tokens a month" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda g, a, hours_per_month=730: g / a * 1e6, "multiply by hours_per_month"),
    (lambda g, a, hours_per_month=730: g * hours_per_month / a, "millions of tokens"),
    (lambda g, a, hours_per_month=730: a / (g * hours_per_month) * 1e6, "upside down"),
    (lambda g, a, hours_per_month=730: g * 730 / a * 1e6, "use the argument"),
    (lambda g, a, hours_per_month=730: g * 720 / a * 1e6, "720"),
    (lambda g, a, hours_per_month=730: g * 24 * 365 / a * 1e6, "8,760"),
])
def test_break_even_known_mistakes(wrong, hint) -> None:
    fails_with(check_break_even_tokens_per_month, wrong, hint)


def test_break_even_without_hours_parameter() -> None:
    fails_with(check_break_even_tokens_per_month, lambda g, a: g * 730 / a * 1e6, "hours_per_month")


# ----------------------------------------------------------------- sha256_of_file

def sha_ok(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


def test_sha_accepts_right_answer(capsys) -> None:
    passes(check_sha256_of_file, sha_ok, capsys)


def test_sha_accepts_reading_all_at_once(capsys) -> None:
    passes(check_sha256_of_file, lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest(), capsys)


def first_chunk_only(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(8192)).hexdigest()


def new_hash_each_chunk(path):
    digest = hashlib.sha256(b"").hexdigest()
    with open(path, "rb") as f:
        while chunk := f.read(8192):
            digest = hashlib.sha256(chunk).hexdigest()
    return digest


@pytest.mark.parametrize("wrong, hint", [
    (lambda p: hashlib.sha256(str(p).encode()).hexdigest(), "not its contents"),
    (lambda p: hashlib.sha256(Path(p).name.encode()).hexdigest(), "its name"),
    (lambda p: hashlib.sha256(Path(p).read_bytes()).digest(), "hexdigest"),
    (lambda p: sha_ok(p).upper(), "lowercase"),
    (lambda p: hashlib.md5(Path(p).read_bytes()).hexdigest(), "md5"),
    (lambda p: hashlib.sha1(Path(p).read_bytes()).hexdigest(), "sha1"),
    (first_chunk_only, "only the first 8,192 bytes"),
    (new_hash_each_chunk, "last chunk"),
    (lambda p: hashlib.sha256(open(p).read()).hexdigest(), "open(path, 'rb')"),
    (lambda p: None, "return"),
])
def test_sha_known_mistakes(wrong, hint) -> None:
    fails_with(check_sha256_of_file, wrong, hint)


# ----------------------------------------------------------------- find_globals

def globals_ok(data):
    found, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            found.add(f"{module}.{name}")
        elif opcode.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def test_find_globals_accepts_right_answer(capsys) -> None:
    passes(check_find_globals, globals_ok, capsys)


def test_find_globals_accepts_a_list(capsys) -> None:
    passes(check_find_globals, lambda data: sorted(globals_ok(data)), capsys)


class RecordingUnpickler(pickle.Unpickler):
    """Loads a harmless pickle and records every (module, name) it really imports."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.imported: set[str] = set()

    def find_class(self, module, name):
        self.imported.add(f"{module}.{name}")
        return super().find_class(module, name)


HARMLESS = [Path("a"), [Path("a"), Path.home, Path("b")], {"when": datetime.date(2024, 5, 1)},
            collections.OrderedDict(a=Fraction(1, 3), b=Fraction(2, 3)), len]


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("obj", HARMLESS, ids=lambda o: type(o).__name__)
def test_reference_matches_what_unpickling_really_imports(obj, protocol) -> None:
    """The reference reads the opcodes; a real (harmless) load says what it imports, memo included."""
    data = pickle.dumps(obj, protocol=protocol)
    unpickler = RecordingUnpickler(data)
    unpickler.load()
    assert reference_globals(data) == unpickler.imported


def test_repeated_names_come_back_through_the_memo() -> None:
    data = pickle.dumps([Path("a"), Path.home, Path("b")], protocol=4)
    assert {"BINGET", "LONG_BINGET"} & {op.name for op, _, _ in pickletools.genops(data)}


def unpickles(data):
    """The mistake the exercise exists for: loading the file to see what is in it."""
    try:
        pickle.loads(data)
    except Exception:  # noqa: BLE001 - torch's data.pkl needs its zip to load fully
        pass
    return globals_ok(data)


def only_global(data):
    return {arg.replace(" ", ".", 1) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def with_space(data):
    return {g.replace(".", " ", 1) if g.startswith(("__builtin__", "builtins", "collections", "pathlib"))
            else g.replace("._", " _", 1) if g.startswith("torch._utils") else g.replace(".", " ", 1)
            for g in globals_ok(data)}


def swapped(data):
    return {".".join(reversed(g.rsplit(".", 1))) for g in globals_ok(data)}


@pytest.mark.parametrize("wrong, hint", [
    (unpickles, "RAN the payload"),
    (only_global, "STACK_GLOBAL"),
    (with_space, "joined by a space"),
    (swapped, "wrong way round"),
    (lambda data: {op.name for op, _, _ in pickletools.genops(data) if "GLOBAL" in op.name}, "opcode"),
    (lambda data: "__builtin__.exec", "one string"),
    (lambda data: None, "return"),
    (lambda data: 42, "should be a set"),
    (lambda data: globals_ok(data) | {"os.system"}, "not imported by this pickle"),
    (lambda data: globals_ok(data) - {"torch.FloatStorage"}, "missing"),
])
def test_find_globals_known_mistakes(wrong, hint) -> None:
    fails_with(check_find_globals, wrong, hint)


def test_find_globals_crash_becomes_feedback() -> None:
    def crashes(data):
        return {arg.split(" ")[0] for op, arg, _ in pickletools.genops(data)}
    with pytest.raises(ExerciseFailed) as info:
        check_find_globals(crashes)
    assert "find_globals raised AttributeError" in str(info.value)
