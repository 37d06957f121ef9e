"""Checks for chapter 10, "Choosing, and using open weights safely".

Each ``check_*`` function calls the learner's function and compares the result with a
reference computed here: from the dated price and throughput tables in ``data/``, from
``hashlib`` on a file the check writes, or from ``pickletools`` walking a pickle the
check builds. Known mistakes (a forgotten 3,600 seconds per hour, millions against
units, a hash of the file *name*, a scanner that misses ``STACK_GLOBAL``...) are computed
from the same inputs with one step changed, so their hints name the mistake.

The pickle check builds real payloads, harmless ones: each only writes a short note
into a temporary folder the check creates, and the check fails loudly if the learner's
function ran it (that is, unpickled the data instead of reading it).
"""

from __future__ import annotations

import csv
import hashlib
import io
import pickle
import pickletools
import random
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glassbox.exercise_checks.feedback import call_learner, check_number, check_type, fail, passed
from glassbox.paths import DATA_DIR

__all__ = [
    "HOURS_PER_MONTH",
    "check_break_even_tokens_per_month",
    "check_find_globals",
    "check_sha256_of_file",
    "check_usd_per_million_tokens",
    "reference_globals",
    "reference_pairs",
]

HOURS_PER_MONTH = 730
"""Hours in an average month: 8,760 hours a year / 12."""


def _rows(name: str) -> list[dict[str, str]]:
    with (DATA_DIR / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- exercise 1

def _cost_cases() -> list[tuple[str, float, float]]:
    """(label, tokens per second, dollars per hour): the published GPU speeds priced at that GPU's
    dated hourly price, plus two made-up machines."""
    prices = {row["gpu"]: row for row in _rows("gpu_prices.csv")}
    cases = []
    for row in _rows("gpu_batched_throughput_llama31_8b.csv"):
        price = prices.get(row["gpu"])
        if price is None:
            continue
        cases.append((f"{row['gpu']} at ${float(price['usd_per_hour']):.2f}/h (as of {price['as_of']}), "
                      f"{row['tokens_per_s']} tokens/s with {row['concurrency']} request(s) in flight "
                      f"(as of {row['as_of']})",
                      float(row["tokens_per_s"]), float(price["usd_per_hour"])))
    cases += [("a made-up GPU: 1,000 tokens/s at $3.60/h", 1000.0, 3.6),
              ("a laptop CPU: 12.5 tokens/s at $0.05/h", 12.5, 0.05)]
    return cases


def check_usd_per_million_tokens(usd_per_million_tokens: Callable[[float, float], float]) -> None:
    """Check ``usd_per_million_tokens(tokens_per_second, usd_per_hour) -> float``."""
    cases = _cost_cases()
    for label, tps, usd_per_hour in cases:
        expected = usd_per_hour / (tps * 3600) * 1e6
        mistakes = [
            (usd_per_hour / tps * 1e6, "The price is per hour but the speed is per second: "
                                       "an hour has 3,600 seconds, so tokens per hour = tokens/s × 3,600."),
            (usd_per_hour / (tps * 60) * 1e6, "An hour has 3,600 seconds, not 60."),
            (usd_per_hour / (tps * 3600), "That is the price of one token: multiply by 1,000,000 "
                                          "for the price of a million."),
            (tps * 3600 / usd_per_hour / 1e6, "That is upside down: millions of tokens per dollar. "
                                              "Cost = dollars per hour ÷ millions of tokens per hour."),
            (tps * 3600 / usd_per_hour, "That is tokens per dollar. Cost = dollars per hour ÷ "
                                        "millions of tokens per hour."),
            (usd_per_hour * tps * 3600 / 1e6, "Divide the hourly price by the tokens made in an hour; "
                                              "do not multiply them."),
            (tps / (usd_per_hour * 3600) * 1e6, "The two arguments are swapped: the function is called "
                                                "usd_per_million_tokens(tokens_per_second, usd_per_hour)."),
            (round(expected, 2), "You rounded the result (to cents): return the exact value and round "
                                 "only when you print it."),
        ]
        got = call_learner(usd_per_million_tokens, tps, usd_per_hour, name="usd_per_million_tokens",
                           hints={ZeroDivisionError: "Divide by the tokens per hour, which is never "
                                                     "zero here."})
        check_number(got, expected, f"usd_per_million_tokens({tps}, {usd_per_hour}) for {label}",
                     known_mistakes=[(v, h) for v, h in mistakes if v != expected], rel_tol=1e-6,
                     hint="Tokens per hour = tokens/s × 3,600; cost per million = "
                          "$/hour ÷ (tokens per hour / 1,000,000).")
    label, tps, usd = cases[0]
    passed(f"usd_per_million_tokens: right for {len(cases)} GPUs and speeds; e.g. {label}: "
           f"${usd / (tps * 3600) * 1e6:,.2f} per million tokens.")


# --------------------------------------------------------------------------- exercise 2

def _api_prices(model_prefix: str) -> tuple[str, float, float, str]:
    """(model, $ per million input, $ per million output, as of) from data/api_prices.csv."""
    for row in _rows("api_prices.csv"):
        if row["model"].startswith(model_prefix):
            return row["model"], float(row["usd_per_1m_input"]), float(row["usd_per_1m_output"]), row["as_of"]
    raise LookupError(f"no {model_prefix} row in data/api_prices.csv")


def check_break_even_tokens_per_month(
        break_even_tokens_per_month: Callable[..., float]) -> None:
    """Check ``break_even_tokens_per_month(gpu_usd_per_hour, usd_per_million_input,
    usd_per_million_output, input_per_output=3.0, hours_per_month=730)``.

    The answer is in output tokens (not millions) per month; each output token brings
    ``input_per_output`` input tokens, which the API bills at its input price. Cases pair
    rented GPUs from ``data/gpu_prices.csv`` with prices from ``data/api_prices.csv`` at the
    default ratio, then other ratios (0: output only; 10: a long conversation), and one GPU
    rented for only 200 hours a month.
    """
    gpus = _rows("gpu_prices.csv")
    apis = [_api_prices(p) for p in ("gpt-4o-mini", "gpt-4o (", "gpt-5")]
    cases = []  # (label, $/hour, $/M input, $/M output, ratio or None for the default, hours or None)
    for gpu in gpus[:3]:
        for model, p_in, p_out, as_of in apis[:2]:
            cases.append((f"{gpu['gpu']} (${gpu['usd_per_hour']}/h, {gpu['as_of']}) against {model} "
                          f"(${p_in}/M input, ${p_out}/M output, {as_of})",
                          float(gpu["usd_per_hour"]), p_in, p_out, None, None))
    model, p_in, p_out, as_of = apis[2]
    cases.append((f"a GPU at $2.00/h against {model} with 10 input tokens per output token", 2.0, p_in, p_out, 10.0, None))
    cases.append((f"a GPU at $2.00/h against {model} counting output tokens only (ratio 0)", 2.0, p_in, p_out, 0.0, None))
    cases.append((f"a GPU at $2.00/h rented 200 h a month against {model}", 2.0, p_in, p_out, None, 200))
    for label, usd_per_hour, p_in, p_out, ratio, hours in cases:
        kwargs = {}
        if ratio is not None:
            kwargs["input_per_output"] = ratio
        if hours is not None:
            kwargs["hours_per_month"] = hours
        r = 3.0 if ratio is None else ratio
        h = HOURS_PER_MONTH if hours is None else hours
        bill = usd_per_hour * h
        per_output = r * p_in + p_out
        expected = bill / per_output * 1e6
        mistakes = [
            (usd_per_hour / per_output * 1e6, "That is the break-even for one hour. The GPU is paid "
                                              "for every hour of the month: multiply by hours_per_month."),
            (bill / per_output, "That is in millions of tokens; the answer is in tokens: multiply by 1,000,000."),
            (per_output / bill * 1e6, "Upside down: the break-even volume is the monthly GPU bill ÷ "
                                      "the API's price per output token."),
            (bill / (p_in + p_out) * 1e6, "You added the two prices as if each output token came with one "
                                          "input token: multiply the input price by input_per_output."),
            (bill / (p_in + r * p_out) * 1e6, "The ratio multiplies the wrong price: it is input tokens per "
                                              "output token, so it multiplies the input price."),
            (bill / (p_in / r + p_out) * 1e6 if r else None,
             "Multiply the input price by input_per_output; do not divide by it."),
            (expected * (1 + r), "That counts input and output tokens together; the answer is in output tokens."),
            (expected / (1 + r), "That is too small by 1 + input_per_output: the answer counts output tokens, "
                                 "and the API price per output token already includes its input tokens."),
        ]
        if r:
            mistakes.append((bill / p_out * 1e6, "That counts output tokens only. The API also bills the "
                                                 "input tokens: input_per_output of them per output token, "
                                                 "at the input price."))
            mistakes.append((bill / (3.0 * p_in + p_out) * 1e6 if r != 3.0 else None,
                             "You used a ratio of 3; use the input_per_output argument."))
        if hours is not None:
            mistakes.append((usd_per_hour * HOURS_PER_MONTH / per_output * 1e6,
                             "You used 730 hours, but this GPU is rented for hours_per_month hours: "
                             "use the argument."))
        for other in (720, 744, 24 * 365):
            if other != h:
                mistakes.append((usd_per_hour * other / per_output * 1e6,
                                 f"You used {other:,} hours; use the hours_per_month argument "
                                 "(730 by default: 8,760 hours a year / 12)."))
        mistakes = [(value, hint) for value, hint in mistakes if value is not None]
        got = call_learner(break_even_tokens_per_month, usd_per_hour, p_in, p_out, **kwargs,
                           name="break_even_tokens_per_month",
                           hints={TypeError: "Give the function the parameters (gpu_usd_per_hour, "
                                             "usd_per_million_input, usd_per_million_output, "
                                             "input_per_output=3.0, hours_per_month=730)."})
        check_number(got, expected, f"break_even_tokens_per_month for {label}",
                     known_mistakes=mistakes, rel_tol=1e-6,
                     hint="Monthly GPU bill = $/hour × hours; one output token through the API costs "
                          "(input_per_output × input price + output price) / 1,000,000; "
                          "break-even output tokens = bill ÷ that.")
    label, usd_per_hour, p_in, p_out, _, _ = cases[0]
    passed(f"break_even_tokens_per_month: right for {len(cases)} cases; e.g. {label}, 3 input tokens per "
           f"output token: {usd_per_hour * HOURS_PER_MONTH / (3.0 * p_in + p_out):,.0f} million output tokens a month.")


# --------------------------------------------------------------------------- exercise 3

def check_sha256_of_file(sha256_of_file: Callable[[Path], str]) -> None:
    """Check ``sha256_of_file(path) -> str`` (lowercase hex) on files of 0 bytes to 3 MB.

    The files are written by the check into a temporary folder; the reference is
    ``hashlib.sha256(whole file).hexdigest()``.
    """
    generator = random.Random(9)
    sizes = [0, 1, 65_537, 3_000_000]
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            path = Path(folder) / f"download_{size}.bin"
            data = generator.randbytes(size)
            path.write_bytes(data)
            expected = hashlib.sha256(data).hexdigest()
            got = call_learner(sha256_of_file, path, name="sha256_of_file",
                               hints={UnicodeDecodeError: "Open the file in binary mode: "
                                                          "open(path, 'rb'). Weights are bytes, not text.",
                                      TypeError: "hashlib's update() takes bytes: read the file "
                                                 "with open(path, 'rb')."})
            if isinstance(got, (bytes, bytearray)):
                if bytes(got) == hashlib.sha256(data).digest():
                    fail("sha256_of_file returned the 32 raw bytes of the digest.",
                         "Return .hexdigest(), the 64-character text form that websites publish.")
                fail(f"sha256_of_file returned bytes; expected a 64-character hex string.")
            check_type(got, str, f"sha256_of_file({path.name})",
                       hint="Return hashlib.sha256(...).hexdigest(), a str.")
            if got == expected:
                continue
            text = got.strip()
            if text.lower() == expected:
                fail(f"For {path.name} your hash has the right digits in another form ({got[:16]!r}...).",
                     "Return .hexdigest() as it is: lowercase, no spaces. (When you compare with a "
                     "published hash, lowercase both.)")
            name_hashes = {hashlib.sha256(str(path).encode()).hexdigest(): "its full path",
                           hashlib.sha256(path.name.encode()).hexdigest(): "its name"}
            if text in name_hashes:
                fail(f"For {path.name} you hashed {name_hashes[text]}, not its contents.",
                     "Open the file with open(path, 'rb') and feed the bytes you read to the hash.")
            for algorithm in ("md5", "sha1", "sha512", "sha224"):
                if text == hashlib.new(algorithm, data).hexdigest():
                    fail(f"For {path.name} that is the {algorithm.upper()} hash.",
                         "Use hashlib.sha256().")
            for chunk in (1024, 4096, 8192, 65_536, 1 << 20):
                if size > chunk and text == hashlib.sha256(data[:chunk]).hexdigest():
                    fail(f"For {path.name} ({size:,} bytes) you hashed only the first {chunk:,} bytes.",
                         "Read in a loop until f.read(chunk) returns b'' and update() the hash "
                         "with every chunk.")
                if size % chunk and text == hashlib.sha256(data[:size - size % chunk]).hexdigest():
                    fail(f"For {path.name} ({size:,} bytes) you left out the last chunk, the one shorter "
                         "than the size you read with" + (f" ({chunk:,} bytes)." if size > chunk else "."),
                         "Keep reading until f.read(chunk) returns b'' (an empty bytes object): a chunk "
                         "shorter than asked for is still data.")
                if size > chunk and text == hashlib.sha256(data[-(size % chunk or chunk):]).hexdigest():
                    fail(f"For {path.name} you hashed only the last chunk.",
                         "Create the hash once before the loop and call update() on it for every "
                         "chunk; do not create a new hash inside the loop.")
            fail(f"sha256_of_file({path.name}) ({size:,} bytes) returned {got[:20]!r}..., expected "
                 f"{expected[:20]!r}...",
                 "h = hashlib.sha256(); with open(path, 'rb') as f: read chunks and h.update(chunk); "
                 "return h.hexdigest().")
    passed(f"sha256_of_file: matches hashlib for {len(sizes)} files from 0 to {max(sizes):,} bytes.")


# --------------------------------------------------------------------------- exercise 4

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


def reference_pairs(data: bytes) -> set[tuple[str, str]]:
    """Every global a pickle imports, as ``(module, name)``, found by walking its opcodes.

    ``GLOBAL`` (protocols 0 to 3) carries ``"module name"`` as its argument.
    ``STACK_GLOBAL`` (protocol 4 and later) takes the module and name from the last two
    strings pushed, which may come back from the memo (``MEMOIZE``/``BINPUT`` then ``BINGET``).
    Nothing is unpickled.
    """
    found: set[tuple[str, str]] = set()
    pushed: list[Any] = []
    memo: dict[int, Any] = {}
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name == "GLOBAL":
            module, _, attribute = arg.partition(" ")
            found.add((module, attribute))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            found.add((str(pushed[-2]), str(pushed[-1])))
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in _PUT_OPS:
            memo[arg] = pushed[-1] if pushed else None
        elif name in _GET_OPS:
            pushed.append(memo.get(arg))
    return found


def reference_globals(data: bytes) -> set[str]:
    """Every global a pickle imports, as ``"module.name"`` (see ``reference_pairs``)."""
    return {f"{module}.{name}" for module, name in reference_pairs(data)}


class _Payload:
    """Unpickling this object writes a short note into ``target``, nothing else."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        code = f"open({str(self.target)!r}, 'w').write('written while unpickling')"
        return (exec, (code,))


def _data_pkl(checkpoint: bytes) -> bytes:
    """The pickle inside a torch checkpoint (a zip file)."""
    with zipfile.ZipFile(io.BytesIO(checkpoint)) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        return archive.read(name)


def _cases(folder: Path) -> list[tuple[str, bytes, Path | None]]:
    """(label, pickle bytes, payload target or None): three carry a payload, one is clean."""
    import torch

    def torch_pickle(obj: Any) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return _data_pkl(buffer.getvalue())

    generator = torch.Generator().manual_seed(0)
    clean = {"linear.weight": torch.randn(2, 3, generator=generator), "linear.bias": torch.zeros(2)}
    targets = [folder / f"note_{i}.txt" for i in range(3)]
    return [
        ("a bare payload, protocol 2", pickle.dumps(_Payload(targets[0]), protocol=2), targets[0]),
        ("a clean torch checkpoint's data.pkl", torch_pickle(clean), None),
        ("a torch checkpoint with a payload hidden among the tensors",
         torch_pickle({**clean, "optimizer": _Payload(targets[1])}), targets[1]),
        ("a payload pickled with protocol 5",
         pickle.dumps({"step": 3, "config": _Payload(targets[2]), "path": Path("model.bin")}, protocol=5),
         targets[2]),
    ]


def check_find_globals(find_globals: Callable[[bytes], Any]) -> None:
    """Check ``find_globals(data: bytes) -> set[str]`` on four pickles, without unpickling any.

    Each payload writes a note into a temporary folder if it is ever unpickled; the check
    fails if a note appears, because then the learner's function ran the payload.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = _cases(folder)
        for label, data, target in cases:
            expected = reference_globals(data)
            got = call_learner(find_globals, data, name="find_globals")
            ran = sorted(p.name for p in folder.iterdir())
            if ran:
                fail(f"Your function RAN the payload in {label}: it wrote {ran[0]} while you were "
                     "looking for it.",
                     "Never pickle.loads / torch.load an untrusted file to inspect it. Walk its "
                     "opcodes with pickletools.genops(data) instead: that only reads.")
            if isinstance(got, str):
                fail(f"find_globals returned one string ({got[:40]!r}); expected a set of strings.",
                     "Collect every global in a set and return the set.")
            if got is None:
                fail("find_globals returned None.", "Did you forget `return found`?")
            check_type(got, (set, frozenset, list, tuple), f"find_globals({label})",
                       hint="Return a set of 'module.name' strings.")
            got_set = set(got)
            if got_set == expected:
                continue
            if any(isinstance(g, str) and g in {"GLOBAL", "STACK_GLOBAL", "REDUCE"} for g in got_set):
                fail(f"For {label} your set holds opcode names ({sorted(map(str, got_set))[:3]}).",
                     "Return what each global refers to, 'module.name', not the opcode's name.")
            pairs = reference_pairs(data)
            if got_set == {f"{m} {n}" for m, n in pairs}:
                fail(f"For {label} you returned {sorted(got_set)[:2]}: module and name joined by a space.",
                     "GLOBAL's argument is 'module name'; join them with a dot: 'module.name'.")
            if got_set == {f"{n}.{m}" for m, n in pairs}:
                fail(f"For {label} module and name are the wrong way round ({sorted(got_set)[:2]}).",
                     "For STACK_GLOBAL the module is pushed first, then the name: module = the "
                     "second-to-last string, name = the last.")
            only_global = {f"{a.partition(' ')[0]}.{a.partition(' ')[2]}"
                           for op, a, _ in pickletools.genops(data) if op.name == "GLOBAL"}
            if got_set == only_global and expected - only_global:
                fail(f"For {label} you found {len(got_set)} of {len(expected)} globals; you missed "
                     f"{sorted(expected - only_global)}.",
                     "Protocol 4 and later use STACK_GLOBAL, which has no argument: its module and "
                     "name are the last two strings pushed just before it (SHORT_BINUNICODE ops).")
            if got_set < expected and all(g.split(".")[0] not in {"torch", "collections"} for g in got_set) \
                    and any(g.split(".")[0] in {"torch", "collections"} for g in expected - got_set):
                fail(f"For {label} you left out {sorted(expected - got_set)[:3]}: the globals you judged safe.",
                     "Return every global the pickle imports, the harmless ones too; deciding which are "
                     "allowed is the next step, with an allow-list.")
            missing, extra = expected - got_set, got_set - expected
            problem = []
            if missing:
                problem.append(f"missing {sorted(missing)}")
            if extra:
                problem.append(f"not imported by this pickle: {sorted(map(str, extra))[:3]}")
            fail(f"For {label}: " + "; ".join(problem) + ".",
                 "Loop over pickletools.genops(data); for GLOBAL split the argument 'module name'; "
                 "for STACK_GLOBAL take the two strings pushed before it.")
    passed("find_globals: found every import in 4 pickles (protocols 2 and 5, torch checkpoints "
           "included), and no payload ran.")
