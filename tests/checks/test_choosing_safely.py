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

from glassbox.exercise_checks.choosing_safely import (
    check_break_even_tokens_per_month,
    check_find_globals,
    check_sha256_of_file,
    check_usd_per_million_tokens,
    reference_globals,
)
from glassbox.exercise_checks.feedback import ExerciseFailed
from checks.conftest import fails_with, passes


def read_data(name: str) -> list[dict[str, str]]:
    import csv

    from glassbox.paths import DATA_DIR

    with (DATA_DIR / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------- usd_per_million_tokens

def cost_ok(tps, usd_per_hour):
    return usd_per_hour / (tps * 3600) * 1e6


def test_cost_accepts_right_answer(capsys) -> None:
    out = passes(check_usd_per_million_tokens, cost_ok, capsys=capsys)
    price = next(r for r in read_data("gpu_prices.csv") if r["gpu"] == "H100")
    speed = next(r for r in read_data("gpu_batched_throughput_llama31_8b.csv") if r["concurrency"] == "1")
    assert "H100" in out and f"${cost_ok(float(speed['tokens_per_s']), float(price['usd_per_hour'])):,.2f}" in out


def test_cost_cases_are_all_dated() -> None:
    """The check prices only GPUs whose price and speed both carry a date (no 'unknown')."""
    from glassbox.exercise_checks.choosing_safely import _cost_cases
    published = [label for label, _, _ in _cost_cases() if "made-up" not in label and "laptop" not in label]
    assert len(published) == len(read_data("gpu_batched_throughput_llama31_8b.csv"))
    assert all("as of" in label and "unknown" not in label for label in published), published


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
    fails_with(check_usd_per_million_tokens, wrong, match=hint)


@pytest.mark.parametrize("answer, hint", [
    (None, "return"), (float("nan"), "nan"), ("10.20", "should be a number"), (True, "bool"),
])
def test_cost_bad_types(answer, hint) -> None:
    fails_with(check_usd_per_million_tokens, lambda tps, usd: answer, match=hint)


def test_cost_swapped_arguments_crash_gives_feedback() -> None:
    def swapped(usd_per_hour, tokens_per_second):  # arguments in the wrong order
        return usd_per_hour / (tokens_per_second * 3600) * 1e6
    fails_with(check_usd_per_million_tokens, swapped, match="expected")


def test_cost_not_implemented_passes_through() -> None:
    def stub(tps, usd):
        raise NotImplementedError
    with pytest.raises(NotImplementedError):
        check_usd_per_million_tokens(stub)


# ----------------------------------------------------------------- break_even_tokens_per_month

def break_even_ok(gpu_usd_per_hour, usd_per_m_input, usd_per_m_output, input_per_output=3.0, hours_per_month=730):
    return gpu_usd_per_hour * hours_per_month / ((input_per_output * usd_per_m_input + usd_per_m_output) / 1e6)


def test_break_even_accepts_right_answer(capsys) -> None:
    out = passes(check_break_even_tokens_per_month, break_even_ok, capsys=capsys)
    assert "million output tokens a month" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730: g * hours_per_month / o * 1e6,
     "counts output tokens only"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730: g * hours_per_month / (i + o) * 1e6,
     "multiply the input price by input_per_output"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730:
        g * hours_per_month / (i + input_per_output * o) * 1e6, "multiplies the wrong price"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730:
        g * hours_per_month / (i / input_per_output + o) * 1e6, "do not divide"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730:
        break_even_ok(g, i, o, input_per_output, hours_per_month) * (1 + input_per_output),
     "input and output tokens together"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730:
        break_even_ok(g, i, o, 3.0, hours_per_month), "use the input_per_output argument"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730:
        g / (input_per_output * i + o) * 1e6, "multiply by hours_per_month"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730:
        g * hours_per_month / (input_per_output * i + o), "millions of tokens"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730:
        (input_per_output * i + o) / (g * hours_per_month) * 1e6, "upside down"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730: break_even_ok(g, i, o, input_per_output, 730),
     "use the argument"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730: break_even_ok(g, i, o, input_per_output, 720),
     "720"),
    (lambda g, i, o, input_per_output=3.0, hours_per_month=730: break_even_ok(g, i, o, input_per_output, 24 * 365),
     "8,760"),
])
def test_break_even_known_mistakes(wrong, hint) -> None:
    fails_with(check_break_even_tokens_per_month, wrong, match=hint)


def test_break_even_old_signature_gets_told_the_parameters() -> None:
    """The answer to the old exercise (output price only, two prices missing) fails with the new signature."""
    fails_with(check_break_even_tokens_per_month, lambda g, a, hours_per_month=730: g * hours_per_month / a * 1e6,
               match="input_per_output")


def test_break_even_without_ratio_parameter() -> None:
    fails_with(check_break_even_tokens_per_month,
               lambda g, i, o, hours_per_month=730: g * hours_per_month / (3 * i + o) * 1e6, match="input_per_output")


# ----------------------------------------------------------------- batching sanity check

from glassbox.batching import batching_gains  # noqa: E402


def test_batching_gains_are_relative_to_batch_one() -> None:
    gains, problems = batching_gains({1: 0.010, 4: 0.020, 16: 0.080})
    assert gains == pytest.approx({1: 1.0, 4: 2.0, 16: 2.0}) and problems == []


def test_batching_gain_above_the_batch_size_is_named() -> None:
    """The old chapter's figure: batch 16 at 31 x batch 1. A step for 16 faster than a step for 1."""
    gains, problems = batching_gains({1: 0.200, 4: 0.114, 16: 0.102})
    assert gains[16] == pytest.approx(16 * 0.200 / 0.102)
    assert len(problems) == 2 and "batch 4" in problems[0] and "batch 16" in problems[1]
    assert "more than the batch size" in problems[1] and "measure again" in problems[1]


def test_batching_gain_equal_to_the_batch_size_is_possible() -> None:
    """Perfect batching (the step costs the same for 16 as for 1) is the limit, not a problem."""
    assert batching_gains({1: 0.01, 16: 0.01})[1] == []
    assert batching_gains({1: 0.01, 16: 0.0099})[1] == []  # within the 5 % timer tolerance
    assert batching_gains({1: 0.01, 16: 0.009})[1] != []


@pytest.mark.parametrize("bad, match", [
    ({4: 0.01}, "needs batch 1"), ({1: 0.0, 4: 0.01}, "positive"), ({1: float("nan")}, "positive"),
    ({1: -1.0}, "positive"),
])
def test_batching_gains_bad_input(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        batching_gains(bad)


def test_decode_step_seconds_restores_threads_and_measures_every_batch() -> None:
    import torch

    from glassbox import load_model
    from glassbox.batching import decode_step_seconds

    model, tokenizer = load_model("tinygpt")
    before = torch.get_num_threads()
    ids = tokenizer("<|endoftext|>The nurse", return_tensors="pt").input_ids
    seconds = decode_step_seconds(model, ids, [1, 2], steps=2, repeats=1, threads=1)
    assert sorted(seconds) == [1, 2] and all(s > 0 for s in seconds.values())
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"):
        decode_step_seconds(model, ids, [0, 1], steps=2)


# ----------------------------------------------------------------- sha256_of_file

def sha_ok(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


def test_sha_accepts_right_answer(capsys) -> None:
    passes(check_sha256_of_file, sha_ok, capsys=capsys)


def test_sha_accepts_other_chunk_sizes_and_file_digest(capsys) -> None:
    def in_4_mib_chunks(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(4 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def with_file_digest(path):
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    passes(check_sha256_of_file, in_4_mib_chunks, capsys=capsys)
    passes(check_sha256_of_file, with_file_digest, capsys=capsys)


def read_with_its_size(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(Path(path).stat().st_size)).hexdigest()


@pytest.mark.parametrize("wrong, asked", [
    (lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest(), "asked for everything"),
    (lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest(), "asked for everything"),
    (lambda p: hashlib.sha256(open(p, "rb").read(1 << 30)).hexdigest(), "asked for 1,073,741,824 bytes"),
    (read_with_its_size, "asked for 3,000,000 bytes"),
])
def test_sha_reading_the_whole_file_at_once_is_rejected(wrong, asked) -> None:
    """The exercise asks for chunks; these hashes are right, but each read the 3 MB file in one piece
    (they all passed before the check watched how the file is read)."""
    message = fails_with(check_sha256_of_file, wrong, match="in one read")
    assert asked in message and "5 GB" in message


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
    fails_with(check_sha256_of_file, wrong, match=hint)


# ----------------------------------------------------------------- find_globals

def globals_ok(data, follow_memo=True):
    found, strings, memo = set(), [], {}
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            found.add(f"{module}.{name}")
        elif opcode.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
        elif follow_memo and opcode.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif follow_memo and opcode.name in ("BINGET", "LONG_BINGET"):
            strings.append(memo.get(arg))
    return found


def memo_unaware(data):
    """The course's own solution until issue 16: right unless a string comes back from the memo."""
    return globals_ok(data, follow_memo=False)


def test_find_globals_that_ignores_the_memo_is_rejected() -> None:
    fails_with(check_find_globals, memo_unaware, match="did not follow the memo")


def test_find_globals_accepts_right_answer(capsys) -> None:
    passes(check_find_globals, globals_ok, capsys=capsys)


def test_find_globals_accepts_a_list(capsys) -> None:
    passes(check_find_globals, lambda data: sorted(globals_ok(data)), capsys=capsys)


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
    fails_with(check_find_globals, wrong, match=hint)


def test_find_globals_crash_becomes_feedback() -> None:
    def crashes(data):
        return {arg.split(" ")[0] for op, arg, _ in pickletools.genops(data)}
    with pytest.raises(ExerciseFailed) as info:
        check_find_globals(crashes)
    assert "find_globals raised AttributeError" in str(info.value)


# ----------------------------------------------------------------- catalogue of wrong answers (issue 16)
# Each answer below was rejected before issue 16 but without a message naming its mistake.

@pytest.mark.parametrize("wrong, hint", [
    (lambda tps, usd: round(cost_ok(tps, usd), 2), "rounded the result"),
    (lambda tps, usd: cost_ok(usd, tps), "arguments are swapped"),
    (lambda tps, usd: usd * 3600 / tps, "expected"),
])
def test_cost_catalogue(wrong, hint) -> None:
    fails_with(check_usd_per_million_tokens, wrong, match=hint)


def all_but_the_last_short_chunk(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while len(chunk := f.read(65_536)) == 65_536:
            h.update(chunk)
    return h.hexdigest()


def latin1_text(path):
    with open(path, encoding="latin-1") as f:   # text mode turns b"\r\n" into "\n": other bytes, another hash
        return hashlib.sha256(f.read().encode("latin-1")).hexdigest()


def test_sha_in_text_mode_is_named() -> None:
    fails_with(check_sha256_of_file, latin1_text, match="read in text mode")


@pytest.mark.parametrize("wrong, hint", [
    (all_but_the_last_short_chunk, "left out the last chunk"),
    (lambda path: sha_ok(path).upper(), "right digits in another form"),
    (lambda path: hashlib.sha256(path.read_bytes()).digest(), "32 raw bytes"),
])
def test_sha_catalogue(wrong, hint) -> None:
    fails_with(check_sha256_of_file, wrong, match=hint)


def only_the_suspicious_globals(data):
    return {g for g in globals_ok(data) if g.split(".")[0] not in {"torch", "collections"}}


@pytest.mark.parametrize("wrong, hint", [
    (only_the_suspicious_globals, "the globals you judged safe"),
    (lambda data: sorted(globals_ok(data))[0] if globals_ok(data) else "", "one string"),
    (lambda data: {g.replace(".", ":") for g in globals_ok(data)}, "missing"),
])
def test_find_globals_catalogue(wrong, hint) -> None:
    fails_with(check_find_globals, wrong, match=hint)
