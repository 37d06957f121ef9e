"""Checks for chapter 10, "Choosing, and using open weights safely": references from the dated tables in
``data/``, from ``hashlib`` on files the check writes, and from ``pickletools`` on pickles it builds, whose
harmless payloads write a note into a temporary folder if the learner's function ever runs them."""

from __future__ import annotations

import builtins
import collections
import contextlib
import hashlib
import io
import pickle
import pickletools
import random
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from glassbox.exercise_checks.feedback import (call_learner, check_number, check_type, data_rows, fail, mistakes_from,
                                               passed)

__all__ = ["HOURS_PER_MONTH", "check_break_even_tokens_per_month", "check_find_globals", "check_sha256_of_file",
           "check_usd_per_million_tokens", "reference_globals", "reference_pairs"]

HOURS_PER_MONTH = 730
"""Hours in an average month: 8,760 hours a year / 12."""


# --------------------------------------------------------------------------- exercise 1

def _cost_cases() -> list[tuple[str, float, float]]:
    """(label, tokens per second, dollars per hour): each published GPU speed at that GPU's dated hourly price,
    plus two made-up machines."""
    prices = {row["gpu"]: row for row in data_rows("gpu_prices.csv")}
    cases = [(f"{row['gpu']} at ${float(price['usd_per_hour']):.2f}/h (as of {price['as_of']}), "
              f"{row['tokens_per_s']} tokens/s with {row['concurrency']} request(s) in flight (as of {row['as_of']})",
              float(row["tokens_per_s"]), float(price["usd_per_hour"]))
             for row in data_rows("gpu_batched_throughput_llama31_8b.csv") if (price := prices.get(row["gpu"]))]
    return cases + [("a made-up GPU: 1,000 tokens/s at $3.60/h", 1000.0, 3.6),
                    ("a laptop CPU: 12.5 tokens/s at $0.05/h", 12.5, 0.05)]


def _usd_per_m(tps: float, usd: float, *, seconds: float = 3600, per: float = 1e6, upside_down: bool = False,
               times: bool = False, swapped: bool = False, rounded: bool = False) -> float:
    """The cost of a million tokens (defaults), or a mistake: one setting changed."""
    if swapped:
        tps, usd = usd, tps
    tokens = tps * seconds / per  # (millions of) tokens per hour
    value = usd * tokens if times else tokens / usd if upside_down else usd / tokens
    return round(value, 2) if rounded else value


_COST_MISTAKES: list[tuple[dict[str, Any], str]] = [
    (dict(seconds=1), "The price is per hour but the speed is per second: an hour has 3,600 seconds, so tokens "
                      "per hour = tokens/s × 3,600."),
    (dict(seconds=60), "An hour has 3,600 seconds, not 60."),
    (dict(per=1), "That is the price of one token: multiply by 1,000,000 for the price of a million."),
    (dict(upside_down=True), "That is upside down: millions of tokens per dollar. Cost = dollars per hour ÷ "
                             "millions of tokens per hour."),
    (dict(upside_down=True, per=1), "That is tokens per dollar. Cost = dollars per hour ÷ millions of tokens "
                                    "per hour."),
    (dict(times=True), "Divide the hourly price by the tokens made in an hour; do not multiply them."),
    (dict(swapped=True), "The two arguments are swapped: the function is called "
                         "usd_per_million_tokens(tokens_per_second, usd_per_hour)."),
    (dict(rounded=True), "You rounded the result (to cents): return the exact value and round only when you print it."),
]


def check_usd_per_million_tokens(usd_per_million_tokens: Callable[[float, float], float]) -> None:
    """Check ``usd_per_million_tokens(tokens_per_second, usd_per_hour) -> float``."""
    cases = _cost_cases()
    for label, tps, usd_per_hour in cases:
        got = call_learner(usd_per_million_tokens, tps, usd_per_hour, name="usd_per_million_tokens",
                           hints={ZeroDivisionError: "Divide by the tokens per hour, which is never zero here."})
        check_number(got, _usd_per_m(tps, usd_per_hour), f"usd_per_million_tokens({tps}, {usd_per_hour}) for {label}",
                     known_mistakes=mistakes_from(lambda **s: _usd_per_m(tps, usd_per_hour, **s), _COST_MISTAKES),
                     rel_tol=1e-6, hint="Tokens per hour = tokens/s × 3,600; cost per million = "
                                        "$/hour ÷ (tokens per hour / 1,000,000).")
    label, tps, usd = cases[0]
    passed(f"usd_per_million_tokens: right for {len(cases)} GPUs and speeds; e.g. {label}: "
           f"${_usd_per_m(tps, usd):,.2f} per million tokens.")


# --------------------------------------------------------------------------- exercise 2

def _api_prices(model_prefix: str) -> tuple[str, float, float, str]:
    """(model, $ per million input, $ per million output, as of) from data/api_prices.csv."""
    row = next(r for r in data_rows("api_prices.csv") if r["model"].startswith(model_prefix))
    return row["model"], float(row["usd_per_1m_input"]), float(row["usd_per_1m_output"]), row["as_of"]


def _break_even(usd_h: float, p_in: float, p_out: float, ratio: float = 3.0, hours: float = HOURS_PER_MONTH, *,
                per: float = 1e6, upside_down: bool = False, ratio_on: str = "input", counted: str = "output") -> float:
    """Break-even output tokens a month (defaults), or a mistake: one setting changed."""
    price = {"input": lambda: ratio * p_in + p_out, "output": lambda: p_in + ratio * p_out,
             "divided": lambda: p_in / ratio + p_out}[ratio_on]()
    bill = usd_h * hours
    value = (price / bill if upside_down else bill / price) * per
    return value * {"output": 1.0, "all": 1 + ratio, "shared": 1 / (1 + ratio)}[counted]


def _break_even_mistakes(ratio: float, hours: float, hours_given: bool) -> list[tuple[dict[str, Any], str]]:
    """(setting of _break_even, hint) for the usual mistakes on a case with this ratio and these hours."""
    settings = [
        (dict(hours=1), "That is the break-even for one hour. The GPU is paid for every hour of the month: "
                        "multiply by hours_per_month."),
        (dict(per=1.0), "That is in millions of tokens; the answer is in tokens: multiply by 1,000,000."),
        (dict(upside_down=True), "Upside down: the break-even volume is the monthly GPU bill ÷ the API's price "
                                 "per output token."),
        (dict(ratio=1.0), "You added the two prices as if each output token came with one input token: multiply "
                          "the input price by input_per_output."),
        (dict(ratio_on="output"), "The ratio multiplies the wrong price: it is input tokens per output token, so "
                                  "it multiplies the input price."),
        (dict(ratio_on="divided"), "Multiply the input price by input_per_output; do not divide by it."),
        (dict(counted="all"), "That counts input and output tokens together; the answer is in output tokens."),
        (dict(counted="shared"), "That is too small by 1 + input_per_output: the answer counts output tokens, "
                                 "and the API price per output token already includes its input tokens."),
    ]
    if ratio:
        settings.append((dict(ratio=0.0), "That counts output tokens only. The API also bills the input tokens: "
                                          "input_per_output of them per output token, at the input price."))
        if ratio != 3.0:
            settings.append((dict(ratio=3.0), "You used a ratio of 3; use the input_per_output argument."))
    if hours_given:
        settings.append((dict(hours=HOURS_PER_MONTH), "You used 730 hours, but this GPU is rented for "
                                                      "hours_per_month hours: use the argument."))
    return settings + [(dict(hours=other), f"You used {other:,} hours; use the hours_per_month argument "
                                           "(730 by default: 8,760 hours a year / 12).")
                       for other in (720, 744, 24 * 365) if other != hours]


def check_break_even_tokens_per_month(break_even_tokens_per_month: Callable[..., float]) -> None:
    """Check ``break_even_tokens_per_month(gpu_usd_per_hour, usd_per_million_input, usd_per_million_output,
    input_per_output=3.0, hours_per_month=730)`` (output tokens a month) on rented GPUs against API prices."""
    apis = [_api_prices(p) for p in ("gpt-4o-mini", "gpt-4o (", "gpt-5")]
    cases = [(f"{gpu['gpu']} (${gpu['usd_per_hour']}/h, {gpu['as_of']}) against {model} "
              f"(${p_in}/M input, ${p_out}/M output, {as_of})", float(gpu["usd_per_hour"]), p_in, p_out, {})
             for gpu in data_rows("gpu_prices.csv")[:3] for model, p_in, p_out, as_of in apis[:2]]
    model, p_in, p_out, _ = apis[2]
    cases += [(f"a GPU at $2.00/h against {model} with 10 input tokens per output token", 2.0, p_in, p_out,
               {"input_per_output": 10.0}),
              (f"a GPU at $2.00/h against {model} counting output tokens only (ratio 0)", 2.0, p_in, p_out,
               {"input_per_output": 0.0}),
              (f"a GPU at $2.00/h rented 200 h a month against {model}", 2.0, p_in, p_out, {"hours_per_month": 200})]
    for label, usd_per_hour, p_in, p_out, kwargs in cases:
        ratio, hours = kwargs.get("input_per_output", 3.0), kwargs.get("hours_per_month", HOURS_PER_MONTH)
        got = call_learner(break_even_tokens_per_month, usd_per_hour, p_in, p_out, **kwargs,
                           name="break_even_tokens_per_month",
                           hints={TypeError: "Give the function the parameters (gpu_usd_per_hour, "
                                             "usd_per_million_input, usd_per_million_output, "
                                             "input_per_output=3.0, hours_per_month=730)."})
        check_number(got, _break_even(usd_per_hour, p_in, p_out, ratio, hours),
                     f"break_even_tokens_per_month for {label}", rel_tol=1e-6, known_mistakes=mistakes_from(
                         lambda **s: _break_even(usd_per_hour, p_in, p_out, **{"ratio": ratio, "hours": hours, **s}),
                         _break_even_mistakes(ratio, hours, "hours_per_month" in kwargs)),
                     hint="Monthly GPU bill = $/hour × hours; one output token through the API costs (input_per_output "
                          "× input price + output price) / 1,000,000; break-even output tokens = bill ÷ that.")
    label, usd_per_hour, p_in, p_out, _ = cases[0]
    passed(f"break_even_tokens_per_month: right for {len(cases)} cases; e.g. {label}, 3 input tokens per "
           f"output token: {_break_even(usd_per_hour, p_in, p_out, per=1):,.0f} million output tokens a month.")


# --------------------------------------------------------------------------- exercise 3

#: A read asking for more than this (or for everything) reads the file at once, not in chunks.
MAX_CHUNK = 64 << 20


@contextlib.contextmanager
def _reads_under(folder: Path) -> Iterator[list[int | None]]:
    """While open, each read from a file under ``folder`` is recorded as the size it asked for (None: all)."""
    log: list[int | None] = []
    real_open, io_open = builtins.open, io.open

    class Recorded:
        def __init__(self, handle: Any) -> None:
            self._handle = handle

        def __getattr__(self, attribute: str) -> Any:
            return getattr(self._handle, attribute)

        def __enter__(self) -> Recorded:
            return self

        def __exit__(self, *exc: Any) -> None:
            self._handle.close()

        def __iter__(self) -> Iterator[Any]:
            return iter(self._handle)

        def _log(self, asked: Any, result: Any) -> Any:
            log.append(None if asked is None or asked < 0 else asked)
            return result

        def read(self, size: int | None = -1) -> Any:
            return self._log(size, self._handle.read(size))

        def readlines(self, hint: int = -1) -> Any:
            return self._log(None if hint <= 0 else hint, self._handle.readlines(hint))

        def readinto(self, buffer: Any) -> Any:
            return self._log(memoryview(buffer).nbytes, self._handle.readinto(buffer))

    def recording_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, *args, **kwargs)
        return Recorded(handle) if isinstance(file, (str, Path)) and Path(file).parent == folder else handle

    builtins.open = io.open = recording_open
    try:
        yield log
    finally:
        builtins.open, io.open = real_open, io_open


def _explain_hash(got: str, data: bytes, path: Path) -> None:
    """Fail naming the mistake that gives ``got`` for the file ``path`` holding ``data``."""
    size, text = len(data), got.strip()
    if text.lower() == hashlib.sha256(data).hexdigest():
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
            fail(f"For {path.name} that is the {algorithm.upper()} hash.", "Use hashlib.sha256().")
    for chunk in (1024, 4096, 8192, 65_536, 1 << 20):
        if size > chunk and text == hashlib.sha256(data[:chunk]).hexdigest():
            fail(f"For {path.name} ({size:,} bytes) you hashed only the first {chunk:,} bytes.",
                 "Read in a loop until f.read(chunk) returns b'' and update() the hash with every chunk.")
        if size % chunk and text == hashlib.sha256(data[:size - size % chunk]).hexdigest():
            fail(f"For {path.name} ({size:,} bytes) you left out the last chunk, the one shorter "
                 "than the size you read with" + (f" ({chunk:,} bytes)." if size > chunk else "."),
                 "Keep reading until f.read(chunk) returns b'' (an empty bytes object): a chunk "
                 "shorter than asked for is still data.")
        if size > chunk and text == hashlib.sha256(data[-(size % chunk or chunk):]).hexdigest():
            fail(f"For {path.name} you hashed only the last chunk.",
                 "Create the hash once before the loop and call update() on it for every "
                 "chunk; do not create a new hash inside the loop.")
    if text == hashlib.sha256(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")).hexdigest():
        fail(f"For {path.name} you hashed the file read in text mode: its line endings (\\r\\n, \\r) became \\n.",
             "Open it with open(path, 'rb'): a weights file is bytes, and text mode changes them.")
    fail(f"sha256_of_file({path.name}) ({size:,} bytes) returned {got[:20]!r}..., expected "
         f"{hashlib.sha256(data).hexdigest()[:20]!r}...",
         "h = hashlib.sha256(); with open(path, 'rb') as f: read chunks and h.update(chunk); return h.hexdigest().")


def check_sha256_of_file(sha256_of_file: Callable[[Path], str]) -> None:
    """Check ``sha256_of_file(path) -> str`` (lowercase hex) on files of 0 bytes to 3 MB, read in chunks."""
    generator = random.Random(9)
    sizes = [0, 1, 65_537, 3_000_000]
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            path = Path(folder) / f"download_{size}.bin"
            data = generator.randbytes(size)
            path.write_bytes(data)
            with _reads_under(Path(folder)) as reads:
                got = call_learner(sha256_of_file, path, name="sha256_of_file",
                                   hints={UnicodeDecodeError: "Open the file in binary mode: open(path, 'rb'). "
                                                              "Weights are bytes, not text.",
                                          TypeError: "hashlib's update() takes bytes: read the file "
                                                     "with open(path, 'rb')."})
            if isinstance(got, (bytes, bytearray)):
                if bytes(got) == hashlib.sha256(data).digest():
                    fail("sha256_of_file returned the 32 raw bytes of the digest.",
                         "Return .hexdigest(), the 64-character text form that websites publish.")
                fail("sha256_of_file returned bytes; expected a 64-character hex string.")
            check_type(got, str, f"sha256_of_file({path.name})", hint="Return hashlib.sha256(...).hexdigest(), a str.")
            if got != hashlib.sha256(data).hexdigest():
                _explain_hash(got, data, path)
            whole = [asked for asked in reads if size and (asked is None or asked > MAX_CHUNK or asked == size)]
            if size == max(sizes) and whole:
                asked = "everything" if whole[0] is None else f"{whole[0]:,} bytes"
                fail(f"sha256_of_file read {path.name} ({size:,} bytes) in one read (it asked for {asked}): the "
                     "exercise asks for chunks, so that a 5 GB file never has to fit in memory.",
                     "Read f.read(1 << 20) (1 MiB) in a loop until it returns b'', and update() the hash with "
                     "every chunk; f.read() and Path.read_bytes() read the whole file at once.")
    passed(f"sha256_of_file: matches hashlib for {len(sizes)} files from 0 to {max(sizes):,} bytes, read in chunks.")


# --------------------------------------------------------------------------- exercise 4

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}


def _pairs(data: bytes, *, memo: bool = True, stack_global: bool = True) -> set[tuple[str, str]]:
    """Every (module, name) a pickle imports, read from its opcodes (defaults), or a mistake: one setting changed.

    ``GLOBAL`` carries ``"module name"``; ``STACK_GLOBAL`` takes the last two strings pushed, which may come
    back from the memo (``MEMOIZE``/``BINPUT`` store the top of the stack, ``BINGET`` pushes it again).
    """
    found: set[tuple[str, str]] = set()
    pushed: list[Any] = []
    remembered: dict[int, Any] = {}
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name == "GLOBAL":
            module, _, attribute = arg.partition(" ")
            found.add((module, attribute))
            pushed.append(None)
        elif name == "STACK_GLOBAL" and stack_global:
            found.add((str(pushed[-2]), str(pushed[-1])))
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name == "MEMOIZE" or name.endswith("PUT"):
            remembered[len(remembered) if name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
        elif name.endswith("GET") and memo:
            pushed.append(remembered.get(arg))
    return found


def reference_pairs(data: bytes) -> set[tuple[str, str]]:
    """Every global a pickle imports, as ``(module, name)``, found by walking its opcodes; nothing is unpickled."""
    return _pairs(data)


def reference_globals(data: bytes) -> set[str]:
    """Every global a pickle imports, as ``"module.name"`` (see ``reference_pairs``)."""
    return {f"{module}.{name}" for module, name in _pairs(data)}


#: (what the reference gives with the mistake, head of the message, hint); heads are formatted with
#: label, got (the first two), n (how many the learner found), m (how many there are) and missed.
_GLOBAL_MISTAKES: list[tuple[Callable[[bytes], set[str]], str, str]] = [
    (lambda d: {f"{m} {n}" for m, n in _pairs(d)}, "For {label} you returned {got}: module and name joined by a space.",
     "GLOBAL's argument is 'module name'; join them with a dot: 'module.name'."),
    (lambda d: {f"{n}.{m}" for m, n in _pairs(d)}, "For {label} module and name are the wrong way round ({got}).",
     "For STACK_GLOBAL the module is pushed first, then the name: module = the second-to-last string, "
     "name = the last."),
    (lambda d: {f"{m}.{n}" for m, n in _pairs(d, stack_global=False)},
     "For {label} you found {n} of {m} globals; you missed {missed}.",
     "Protocol 4 and later use STACK_GLOBAL, which has no argument: its module and name are the last two "
     "strings pushed just before it (SHORT_BINUNICODE ops)."),
    (lambda d: {f"{m}.{n}" for m, n in _pairs(d, memo=False)},
     "For {label} you returned {got}: a string taken from the wrong place, since you did not follow the memo.",
     "A string pickled once is not written again: MEMOIZE stores the top of the stack under the next index "
     "(0, 1, 2, ...) and BINGET (its arg is that index) pushes it again. Keep a dict of memoized strings "
     "and push memo[arg] at every BINGET."),
]


class _Payload:
    """Unpickling this object writes a short note into ``target``, nothing else."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.target)!r}, 'w').write('written while unpickling')",))


def _cases(folder: Path) -> list[tuple[str, bytes]]:
    """(label, pickle bytes): four carry a payload, one is clean."""
    import torch

    def torch_pickle(obj: Any) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
            return archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))

    generator = torch.Generator().manual_seed(0)
    clean = {"linear.weight": torch.randn(2, 3, generator=generator), "linear.bias": torch.zeros(2)}
    hooks = [_Payload(folder / f"note_{i}.txt") for i in range(4)]
    return [
        ("a bare payload, protocol 2", pickle.dumps(hooks[0], protocol=2)),
        ("a clean torch checkpoint's data.pkl", torch_pickle(clean)),
        ("a torch checkpoint with a payload hidden among the tensors", torch_pickle({**clean, "optimizer": hooks[1]})),
        ("a payload pickled with protocol 5",
         pickle.dumps({"step": 3, "config": hooks[2], "path": Path("model.bin")}, protocol=5)),
        ("a payload pickled with protocol 4 after two classes of one module (its name comes back from the memo)",
         pickle.dumps({"counts": collections.Counter("ab"), "maps": collections.ChainMap(), "hook": hooks[3]},
                      protocol=4)),
    ]


def check_find_globals(find_globals: Callable[[bytes], Any]) -> None:
    """Check ``find_globals(data: bytes) -> set[str]`` on five pickles, and that it runs none of their payloads."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = _cases(folder)
        for label, data in cases:
            expected = reference_globals(data)
            got = call_learner(find_globals, data, name="find_globals")
            ran = sorted(p.name for p in folder.iterdir())
            if ran:
                fail(f"Your function RAN the payload in {label}: it wrote {ran[0]} while you were looking for it.",
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
            for wrong, head, hint in _GLOBAL_MISTAKES:
                if got_set == wrong(data):
                    fail(head.format(label=label, got=sorted(got_set)[:2], n=len(got_set), m=len(expected),
                                     missed=sorted(expected - got_set)), hint)
            safe = {"torch", "collections"}
            if got_set < expected and all(g.split(".")[0] not in safe for g in got_set) \
                    and any(g.split(".")[0] in safe for g in expected - got_set):
                fail(f"For {label} you left out {sorted(expected - got_set)[:3]}: the globals you judged safe.",
                     "Return every global the pickle imports, the harmless ones too; deciding which are "
                     "allowed is the next step, with an allow-list.")
            missing, extra = expected - got_set, got_set - expected
            problem = ([f"missing {sorted(missing)}"] if missing else []) + \
                ([f"not imported by this pickle: {sorted(map(str, extra))[:3]}"] if extra else [])
            fail(f"For {label}: " + "; ".join(problem) + ".",
                 "Loop over pickletools.genops(data); for GLOBAL split the argument 'module name'; "
                 "for STACK_GLOBAL take the two strings pushed before it, following the memo (BINGET).")
    passed(f"find_globals: found every import in {len(cases)} pickles (protocols 2, 4 and 5, torch checkpoints "
           "and strings that come back from the memo included), and no payload ran.")
