"""The openness scorecard of chapter 01: every right is tried, never asserted.

A *release* is what a model's makers gave the world: a folder of weights, the training
data, the training code, or only an API. For each right below, an experiment tries to
exercise it with what the release contains, and the mark is whatever happened:
✅ if the experiment ran to the end, ❌ with the error it met if it did not.

Every mark also says how it was obtained (``Outcome.how``):

- ``"measured"``: the experiment ran against the real artefact or endpoint and its result
  decided the mark;
- ``"built in"``: the course built the result in. A release that the course assembled
  without an artefact (``NotReleased``), or an operation that the course's own provider was
  written without (it stands in for a public API, which has no weights download and no
  config endpoint), fails by construction: the mark restates the design, and what it
  teaches is *cited* (no public API offers a weights download), not measured here.

The tier rule (:func:`tier_of`) reads the licence as well as the artefacts: code, data and
weights released under terms that restrict uses (BigScience's RAIL licence for BLOOMZ, for
example) do not make a release open source in the OSI's sense.

The experiments take what they need as arguments (a weights folder, a function that
returns the training text, the training-code module, an API endpoint), so a test can
withhold one artefact and watch the mark flip (tests/test_scorecard.py).

``network_cut()`` is shared with chapter 10. **The rule, the same everywhere in the course:
running offline means that no connection leaves this machine.** With
``allow_loopback=True`` (the rule itself, as chapter 05's self-hosting uses it) connections
to this machine (127.0.0.1, ::1) go through and are recorded as allowed, because a server
you host yourself on loopback keeps working with the cable out; every other connection is
refused and recorded. The default, ``allow_loopback=False``, is stricter: it refuses
loopback too, which proves that a model running *inside this process* needs no server at
all. The course's provider listens on loopback only so that the course runs offline; it
stands for a provider's remote machines, so ``try_offline_api`` treats its address as
off-machine (``remote=``), and that mark is labelled built in.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from glassbox.measure import greedy

__all__ = [
    "BUILT_IN",
    "MEASURED",
    "RIGHTS",
    "NetworkCut",
    "NotReleased",
    "Outcome",
    "Release",
    "Right",
    "network_cut",
    "score",
    "tier_of",
    "to_markdown",
]

MEASURED = "measured"
"""``Outcome.how`` when the experiment's own result decided the mark."""

BUILT_IN = "built in"
"""``Outcome.how`` when the course built the result in (an artefact left out of the release, or
an operation the course's provider was written without)."""

PROMPT = "The nurse"
"""The prompt every local experiment generates from (it fits TinyGPT's grammar)."""

FINE_TUNE_TEXT = "The pilot himself was happy. The nurse herself had a red kite."
"""The text of the one fine-tuning step (TinyGPT's grammar; any text would do)."""

FULL_FINE_TUNE_LIMIT = 50_000_000
"""Above this many parameters, the fine-tuning step trains only the last block (to stay in memory)."""


class NotReleased(LookupError):
    """The release does not contain the artefact an experiment needs."""


class NetworkCut(ConnectionRefusedError):
    """A connection refused by ``network_cut()``."""


@dataclass(frozen=True)
class Right:
    """One right of the scorecard, the OSI freedom it belongs to and where the course teaches it."""

    key: str
    label: str
    freedom: str
    chapter: str
    api_chapter: str


RIGHTS: list[Right] = [
    Right("use", "Use it: generate text", "use", "04_forward_pass", "06_black_box_api"),
    Right("offline", "Run it with the network cut", "use", "10_choosing_safely", "10_choosing_safely"),
    Right("architecture", "Read the architecture", "study", "02_anatomy", "07_api_leaks"),
    Right("weights", "Read the weights", "study", "03_weights", "07_api_leaks"),
    Right("modify", "Change the weights, fine-tune a step", "modify", "05_changing_the_model", "06_black_box_api"),
    Right("self_host", "Self-host: save, reload, generate", "share", "05_changing_the_model", "06_black_box_api"),
    Right("data", "Read the training data", "study", "08_auditing", "07_api_leaks"),
    Right("retrain", "Retrain from scratch", "modify", "05_changing_the_model", "08_auditing"),
]
"""The rights, in the order of the scorecard's rows."""


@dataclass
class Release:
    """What one tier gives you. ``None`` means "not part of this release"."""

    name: str
    tier: str
    weights_dir: Path | None = None
    training_text: Callable[[], str] | None = None
    training_code: ModuleType | None = None
    training_log: Path | None = None
    missing_data: str = "the training data is not part of this release"
    endpoint: Any = None  # a glassbox.api.Endpoint for the closed tier


@dataclass
class Outcome:
    """What happened when a right was tried, and how the mark was obtained (``MEASURED`` or ``BUILT_IN``)."""

    ok: bool
    detail: str
    how: str = MEASURED

    @property
    def mark(self) -> str:
        return "✅" if self.ok else "❌"


# --------------------------------------------------------------------------- the tier rule

OPEN_LICENCE_WORDS = ("open", "yes")
"""The values that count as "open terms" in :func:`tier_of`'s ``licence`` argument."""


def tier_of(weights: str, data: str, code: str, licence: str) -> tuple[str, str]:
    """The tier of a release, and why: ``("fully open" | "open weights" | "closed API", reason)``.

    ``weights``, ``data`` and ``code`` say whether each artefact is released (``"open"``,
    ``"partial"`` or ``"closed"``, as "Opening up ChatGPT" scores them); ``licence`` says
    whether the terms are open (``"open"`` or ``"yes"``: OSI-approved or equivalent) or
    restrict uses (anything else, ``"partial"`` for a RAIL licence, ``"closed"`` for a
    community licence). Fully open needs all three artefacts open **and** open terms: the OSI
    definition asks for the freedom to use the system for any purpose, which a use-restricting
    licence takes away. Weights not released at all is an API; anything between is open weights.
    """
    values = {"weights": weights, "data": data, "code": code}
    if weights == "closed":
        return "closed API", "weights not released"
    missing = [name for name, value in values.items() if value != "open"]
    licence_open = licence.strip().lower() in OPEN_LICENCE_WORDS
    if not missing and licence_open:
        return "fully open", "code, data and weights open, under open terms"
    reasons = []
    if missing:
        reasons.append(", ".join(f"{name} {values[name]}" for name in missing))
    if not licence_open:
        reasons.append(f"licence {licence or 'unknown'}: restricts uses, so not open source under the OSI definition")
    return "open weights", "; ".join(reasons)


# --------------------------------------------------------------------------- the network cut

class Attempts(list):
    """The connections refused inside ``network_cut()``; ``allowed`` lists the loopback ones let through."""

    def __init__(self) -> None:
        super().__init__()
        self.allowed: list[tuple[Any, ...]] = []


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _is_loopback(address: Any) -> bool:
    host = address[0] if isinstance(address, tuple) and address else address
    return isinstance(host, str) and (host in LOOPBACK_HOSTS or host.startswith("127."))


@contextmanager
def network_cut(*, allow_loopback: bool = False,
                remote: tuple[tuple[str, int], ...] = ()) -> Iterator[Attempts]:
    """Refuse every connection that would leave this machine while the block runs.

    Yields the list of refused addresses (empty if nothing tried to connect); its
    ``allowed`` attribute lists the loopback connections let through. With
    ``allow_loopback=True`` connections to this machine go through, as they would with the
    cable out (the course's offline rule, and chapter 05's); by default they are refused too,
    which proves that a model running in this process needs no server at all. ``remote``
    names loopback addresses that stand for another machine (the course's provider stands for
    a provider's servers): they are refused like any off-machine address.
    It also sets ``HF_HUB_OFFLINE=1`` for the block, as a learner cutting the network would.
    This proves what *this process* did; it says nothing about other programs.
    """
    attempts = Attempts()
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    old_offline = os.environ.get("HF_HUB_OFFLINE")
    stand_ins = {(str(host), int(port)) for host, port in remote}

    def passes(address: Any) -> bool:
        if not (allow_loopback and _is_loopback(address)):
            return False
        return not (isinstance(address, tuple) and (str(address[0]), int(address[1])) in stand_ins)

    def refuse(self: socket.socket, address: Any) -> None:
        if passes(address):
            attempts.allowed.append(tuple(address))
            return original_connect(self, address)
        attempts.append(address if isinstance(address, tuple) else (address,))
        raise NetworkCut(f"network cut: the connection to {address!r} was refused")

    def refuse_ex(self: socket.socket, address: Any) -> int:
        if passes(address):
            attempts.allowed.append(tuple(address))
            return original_connect_ex(self, address)
        attempts.append(address if isinstance(address, tuple) else (address,))
        return errno.ECONNREFUSED  # connect_ex reports errors by number instead of raising

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse_ex  # type: ignore[method-assign]
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield attempts
    finally:
        socket.socket.connect = original_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = original_connect_ex  # type: ignore[method-assign]
        if old_offline is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_offline


# --------------------------------------------------------------------------- local experiments

def _load(weights_dir: Path | None, what: str):
    if weights_dir is None:
        raise NotReleased(f"{what} needs the weights, and this release has none")
    from glassbox.loader import load_model

    return load_model(str(weights_dir), verbose=False)


def try_use(weights_dir: Path | None, prompt: str = PROMPT) -> str:
    """Load the weights and generate 8 tokens greedily."""
    model, tokenizer = _load(weights_dir, "generating text on your machine")
    return f"generated {greedy(model, tokenizer, prompt, max_new_tokens=8)!r}"


def try_offline(weights_dir: Path | None, prompt: str = PROMPT) -> str:
    """Load and generate inside the strict ``network_cut()``; fail if anything tried to connect.

    The strict cut (loopback refused too) is more than the offline rule asks: it shows that
    the model needs no server at all, not even one on this machine.
    """
    with network_cut() as attempts:
        model, tokenizer = _load(weights_dir, "running offline")
        text = greedy(model, tokenizer, prompt, max_new_tokens=8)
    if attempts:
        raise ConnectionError(f"{len(attempts)} connection attempt(s) while running: {attempts[:2]}")
    return f"loaded and generated {text!r} with every connection refused; 0 attempts"


def try_read_architecture(weights_dir: Path | None) -> str:
    """Read config.json, the published blueprint."""
    if weights_dir is None:
        raise NotReleased("no config.json: this release has no model folder")
    config = json.loads((Path(weights_dir) / "config.json").read_text())
    keys = ["n_layer", "n_head", "n_embd", "vocab_size", "n_positions"]
    return "config.json: " + ", ".join(f"{k} {config[k]}" for k in keys if k in config)


def try_read_weights(weights_dir: Path | None) -> str:
    """Open model.safetensors and read one tensor's numbers."""
    if weights_dir is None:
        raise NotReleased("no model.safetensors: this release has no weights")
    from safetensors import safe_open

    path = Path(weights_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path.name} in the release folder")
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
        n_numbers = sum(math.prod(handle.get_slice(n).get_shape()) for n in names)
        first = sorted(names)[0]
        tensor = handle.get_tensor(first)
    values = ", ".join(f"{v:.3f}" for v in tensor.flatten()[:3].float().tolist())
    return f"{len(names)} tensors, {n_numbers:,} numbers; {first}[:3] = {values}"


def try_modify(weights_dir: Path | None, text: str = FINE_TUNE_TEXT) -> str:
    """Change one weight by hand, then take one AdamW step on ``text``.

    Models above ``FULL_FINE_TUNE_LIMIT`` parameters train only their last block, so
    the optimizer's memory stays small; the detail says which.
    """
    model, tokenizer = _load(weights_dir, "changing the weights")
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        model.transformer.ln_f.weight[0] += 1.0  # the edit by hand
        edited = model(input_ids=ids).logits
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > FULL_FINE_TUNE_LIMIT:
        model.requires_grad_(False)
        model.transformer.h[-1].requires_grad_(True)
        scope = "the last block (the model is large)"
    else:
        scope = "all weights"
    trainable = [p for p in model.parameters() if p.requires_grad]
    snapshot = trainable[0].detach().clone()
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        loss_after = model(input_ids=ids, labels=ids).loss.item()
    moved = (trainable[0].detach() - snapshot).abs().max().item()
    if moved == 0:
        raise RuntimeError("the optimizer step left the weights unchanged")
    change = (edited - before).abs().max().item()
    return (f"edit moved the logits by up to {change:.3f}; one step on {scope}: "
            f"loss {loss.item():.3f} -> {loss_after:.3f}")


def try_self_host(weights_dir: Path | None, workdir: Path, prompt: str = PROMPT) -> str:
    """Generate, save_pretrained into ``workdir``, reload the copy with the network cut, generate again."""
    model, tokenizer = _load(weights_dir, "self-hosting")
    expected = greedy(model, tokenizer, prompt, max_new_tokens=8)
    copy = Path(workdir) / "self_hosted_copy"
    model.save_pretrained(copy)
    del model
    try:
        with network_cut() as attempts:
            from glassbox.loader import load_model

            reloaded, tokenizer = load_model(str(copy), verbose=False)
            text = greedy(reloaded, tokenizer, prompt, max_new_tokens=8)
        del reloaded
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    if attempts:
        raise ConnectionError(f"the copy tried to connect: {attempts[:2]}")
    if text != expected:
        raise AssertionError(f"the reloaded copy generated {text!r}, the original {expected!r}")
    return f"saved, reloaded offline and generated the same text: {text!r}"


def _published_corpus_sha256(training_log: Path | None) -> str | None:
    if training_log is None or not Path(training_log).is_file():
        return None
    return json.loads(Path(training_log).read_text()).get("corpus_sha256")


def _training_text(training_text: Callable[[], str] | None, missing: str,
                   training_log: Path | None) -> tuple[str, str]:
    """The training text and a note on how it was verified; raises if it is missing or altered."""
    if training_text is None:
        raise NotReleased(missing)
    text = training_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    published = _published_corpus_sha256(training_log)
    if published is None:
        return text, "no published sha-256 to compare with"
    if digest != published:
        raise ValueError(f"this text's sha-256 {digest[:12]}... differs from the published "
                         f"{published[:12]}...: it is not the data the model was trained on")
    return text, f"sha-256 {digest[:12]}... = the training log's"


def try_read_training_data(training_text: Callable[[], str] | None, missing: str = "",
                           training_log: Path | None = None) -> str:
    """Get the training text and verify it against the published sha-256, if there is one."""
    text, verified = _training_text(training_text, missing or "no training data", training_log)
    first = text.split("<|endoftext|>")[0]
    return f"{len(text):,} characters, {verified}; it starts {first[:60]!r}"


def try_retrain(training_text: Callable[[], str] | None, training_code: ModuleType | None,
                missing: str = "", training_log: Path | None = None, steps: int = 3) -> str:
    """Run the first ``steps`` steps of the real training code from scratch.

    Needs the training data (verified against the published sha-256) and the training
    code (a module with ``train(stop_after=..., progress=...)``, like
    ``glassbox.tinygpt.train``). The losses are compared with the published training log.
    """
    _training_text(training_text, missing or "no training data", training_log)
    if training_code is None or not hasattr(training_code, "train"):
        raise NotReleased("no training code in this release")
    _, losses = training_code.train(stop_after=steps, progress=False)
    shown = ", ".join(f"{loss:.3f}" for loss in losses)
    if not all(math.isfinite(loss) for loss in losses):
        raise ArithmeticError(f"training diverged: losses {shown}")
    published = None
    if training_log is not None and Path(training_log).is_file():
        published = json.loads(Path(training_log).read_text()).get("losses", [])[:steps]
    if published and len(published) == len(losses):
        worst = max(abs(a - b) for a, b in zip(losses, published))
        same = "the published log's" if worst < 1e-4 else f"published differ by up to {worst:.2g}"
        return f"{steps} steps from random weights: losses {shown} ({same})"
    return f"{steps} steps from random weights: losses {shown}"


# --------------------------------------------------------------------------- the API tier

def _api(endpoint: Any):
    return endpoint.client.with_options(max_retries=0)


def try_use_api(endpoint: Any, prompt: str = PROMPT) -> str:
    """One completion through the API."""
    reply = _api(endpoint).completions.create(model=endpoint.model, prompt=prompt, max_tokens=8,
                                              temperature=0)
    return f"generated {prompt + reply.choices[0].text!r}"


def _api_address(endpoint: Any) -> tuple[str, int]:
    from urllib.parse import urlsplit

    url = urlsplit(str(endpoint.client.base_url))
    return (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))


def try_offline_api(endpoint: Any, prompt: str = PROMPT) -> str:
    """The same completion under the offline rule (``network_cut(allow_loopback=True)``), on a fresh connection.

    The rule lets loopback through. The course's provider listens on loopback only so that
    the course runs offline; it stands for a provider's remote servers, so its address is
    passed as ``remote`` and refused like them (that mark is built in, see :func:`score`).
    A client that already holds an open connection would reuse it; cutting a real network
    would break that connection too, so the experiment opens a new client for the call.
    """
    import openai

    stands_for_remote = (_api_address(endpoint),) if getattr(endpoint, "is_course_provider", False) else ()
    client = openai.OpenAI(base_url=str(endpoint.client.base_url), api_key=endpoint.client.api_key,
                           max_retries=0)
    try:
        with network_cut(allow_loopback=True, remote=stands_for_remote):
            reply = client.completions.create(model=endpoint.model, prompt=prompt, max_tokens=8,
                                              temperature=0)
    finally:
        client.close()
    return f"generated {prompt + reply.choices[0].text!r} with the network cut"


ARCHITECTURE_FIELDS = ("n_layer", "num_hidden_layers", "n_embd", "hidden_size", "num_parameters", "config")


def try_read_architecture_api(endpoint: Any) -> str:
    """Ask the API about the model: GET /models/{model}."""
    info = _api(endpoint).models.retrieve(endpoint.model).model_dump()
    found = [k for k in ARCHITECTURE_FIELDS if k in info]
    if not found:
        raise NotReleased(f"GET /models/{endpoint.model} answers only {sorted(info)}: "
                          "no layers, no width, no parameter count")
    return f"the API describes the model: {found}"


def _download_weights(endpoint: Any) -> Any:
    import httpx

    return _api(endpoint).get(f"/models/{endpoint.model}/weights", cast_to=httpx.Response)


def try_read_weights_api(endpoint: Any) -> str:
    """Ask the API for the weights file (no public API has such a call)."""
    _download_weights(endpoint)
    return "the API sent a weights file"


def try_modify_api(endpoint: Any) -> str:
    """Ask the API to fine-tune the model (OpenAI sells this for some models, but keeps the result)."""
    _api(endpoint).fine_tuning.jobs.create(model=endpoint.model, training_file="file-glassbox")
    return "the API accepted a fine-tuning job (the tuned weights stay with the provider)"


def try_self_host_api(endpoint: Any) -> str:
    """Self-hosting starts with a copy of the weights: ask the API for one."""
    _download_weights(endpoint)
    return "the API sent a weights file to host"


# --------------------------------------------------------------------------- the scorecard

def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 160 else line[:157] + "..."


def _attempt(experiment: Callable[[], str]) -> Outcome:
    try:
        return Outcome(True, experiment())
    except Exception as error:  # noqa: BLE001 - the error IS the result
        detail = f"{type(error).__name__}: {_first_line(error)}"
        cause, seen = error.__cause__ or error.__context__, 0
        while cause is not None and seen < 8:  # name the network cut behind a client's own error
            if isinstance(cause, NetworkCut):
                detail += f" (cause: {_first_line(cause)})"
                break
            cause, seen = cause.__cause__ or cause.__context__, seen + 1
        return Outcome(False, detail)


COURSE_PROVIDER_BUILT_IN = ("offline", "architecture", "weights", "modify", "self_host")
"""Rights whose ❌ on the course's own provider restates how the provider was built (see the module docstring)."""


def _how(release: Release, key: str, outcome: Outcome) -> str:
    if not outcome.ok and outcome.detail.startswith("NotReleased"):
        return BUILT_IN
    endpoint = release.endpoint
    if endpoint is not None and getattr(endpoint, "is_course_provider", False) \
            and key in COURSE_PROVIDER_BUILT_IN:
        return BUILT_IN
    return MEASURED


def score(release: Release, workdir: Path | None = None) -> dict[str, Outcome]:
    """Try every right of ``RIGHTS`` with what ``release`` contains; returns key -> Outcome.

    Each outcome's ``how`` says whether the experiment measured it or the course built it in.
    """
    if release.endpoint is not None:
        api = release.endpoint
        no_data = "an API returns completions; no call returns the training data"
        experiments: dict[str, Callable[[], str]] = {
            "use": lambda: try_use_api(api),
            "offline": lambda: try_offline_api(api),
            "architecture": lambda: try_read_architecture_api(api),
            "weights": lambda: try_read_weights_api(api),
            "modify": lambda: try_modify_api(api),
            "self_host": lambda: try_self_host_api(api),
            "data": lambda: try_read_training_data(release.training_text, no_data),
            "retrain": lambda: try_retrain(release.training_text, release.training_code, no_data),
        }
    else:
        if workdir is None:
            raise ValueError("score() needs a workdir (a temporary folder) for the self-hosting copy")
        w = release.weights_dir
        experiments = {
            "use": lambda: try_use(w),
            "offline": lambda: try_offline(w),
            "architecture": lambda: try_read_architecture(w),
            "weights": lambda: try_read_weights(w),
            "modify": lambda: try_modify(w),
            "self_host": lambda: try_self_host(w, workdir),
            "data": lambda: try_read_training_data(release.training_text, release.missing_data,
                                                   release.training_log),
            "retrain": lambda: try_retrain(release.training_text, release.training_code,
                                           release.missing_data, release.training_log),
        }
    results = {right.key: _attempt(experiments[right.key]) for right in RIGHTS}
    for key, outcome in results.items():
        outcome.how = _how(release, key, outcome)
    return results


def to_markdown(releases: list[Release], results: list[dict[str, Outcome]]) -> str:
    """The scorecard as a Markdown table (rights × tiers): each mark, how it was obtained, and a link to its chapter."""
    head = "| right | OSI freedom | " + " | ".join(f"{r.tier}: {r.name}" for r in releases) + " |"
    lines = [head, "|---|---|" + "---|" * len(releases)]
    for right in RIGHTS:
        cells = []
        for release, result in zip(releases, results):
            chapter = right.api_chapter if release.endpoint is not None else right.chapter
            outcome = result[right.key]
            cells.append(f"{outcome.mark} {outcome.how} [ch. {chapter[:2]}]({chapter}.ipynb)")
        lines.append(f"| {right.label} | {right.freedom} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
