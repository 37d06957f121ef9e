"""Checks for chapter 02, "Anatomy of GPT-2".

References come from the model or the file itself: parameter counts from the model
``transformers`` builds on the meta device (no memory), never a typed-in number. Each usual
mistake is ``_formula`` (or ``_llama_formula``, for a Llama-style config from
``data/model_configs.csv``) with one setting changed, so its hint fires for any model.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glassbox.exercise_checks.feedback import (
    Mistakes, Refused, call_learner, check_number, check_tensor, check_type, data_rows, fail,
    mistakes_from, passed, refusing, second_gpt2, unpack)

__all__ = ["check_conv1d_to_linear", "check_count_llama_parameters", "check_count_parameters",
           "check_model_size_mb", "check_read_safetensors_header", "check_split_qkv",
           "llama_config", "reference_llama_count", "reference_parameter_count"]


# --------------------------------------------------------------------------- helpers

def _unique_parameter_count(model: nn.Module) -> int:
    """Parameters of a model, each tensor counted once (tied weights are shared)."""
    return sum(p.numel() for p in model.parameters())


@lru_cache(maxsize=16)
def _meta_count(family: str, config_json: str) -> int:
    """Parameters of the model transformers builds from a config on the meta device (no memory)."""
    import transformers

    names = {"GPT2": ("GPT2Config", "GPT2LMHeadModel"), "Llama": ("LlamaConfig", "LlamaForCausalLM")}
    config_class, model_class = (getattr(transformers, name) for name in names[family])
    with torch.device("meta"):
        return _unique_parameter_count(model_class(config_class.from_dict(json.loads(config_json))))


def reference_parameter_count(config: Any) -> int:
    """Parameter count of ``GPT2LMHeadModel(config)``, by building it on the meta device."""
    return _meta_count("GPT2", json.dumps(config.to_dict(), sort_keys=True, default=str))


def _formula(config: Any, *, tied: bool | None = None, wte: bool = True, wpe: bool = True,
             biases: bool = True, ln: bool = True, ln_bias: bool = True,
             ln_f: bool = True, ln_per_block: int = 2, blocks: int | None = None,
             inner: int | None = None, qkv: int = 3, attn_out: bool = True) -> int:
    """GPT-2's parameter count with optional deliberate mistakes (for hints only)."""
    d, v, p, n_layer = config.n_embd, config.vocab_size, config.n_positions, config.n_layer
    width = inner if inner is not None else (config.n_inner or 4 * d)
    norm = (2 * d if ln_bias else d) if ln else 0
    attn = d * qkv * d + (qkv * d if biases else 0)
    if attn_out:
        attn += d * d + (d if biases else 0)
    mlp = 2 * d * width + ((width + d) if biases else 0)
    block = ln_per_block * norm + attn + mlp
    total = (v * d if wte else 0) + (p * d if wpe else 0)
    total += (n_layer if blocks is None else blocks) * block
    total += norm if ln_f else 0
    if tied is None:
        tied = getattr(config, "tie_word_embeddings", True)
    total += 0 if tied else v * d
    return total


def _count_settings(config: Any) -> list[tuple[dict[str, Any], str]]:
    """The usual ways of miscounting GPT-2: (_formula's settings that make it, hint)."""
    d = config.n_embd
    if getattr(config, "tie_word_embeddings", True):
        head = (dict(tied=False), "You counted lm_head as its own matrix. GPT-2 ties it to the token embedding wte (it "
                                  "is the same tensor), so count it once.")
    else:
        head = (dict(tied=True), "This config sets tie_word_embeddings=False, so lm_head "
                                 "is a separate vocab_size x n_embd matrix: count it.")
    mistakes = [
        head,
        (dict(wpe=False), "You left out the position embeddings wpe: n_positions x n_embd."),
        (dict(wte=False), "You left out the token embeddings wte: vocab_size x n_embd."),
        (dict(biases=False), "You left out the biases of the four Conv1D layers "
                             "(attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)."),
        (dict(biases=False, ln_bias=False), "You counted only weights: the biases of the Conv1D layers and of the "
                                            "LayerNorms are parameters too."),
        (dict(ln=False, ln_f=False), "You left out the LayerNorms: each has a weight and a "
                                     "bias of n_embd values; two per block, plus ln_f."),
        (dict(ln_f=False), "You forgot the final LayerNorm ln_f that follows the last block."),
        (dict(ln_bias=False), "A LayerNorm has a bias as well as a weight: 2 x n_embd."),
        (dict(ln_per_block=1), "Each block has two LayerNorms: ln_1 before attention and ln_2 before the MLP."),
        (dict(blocks=1), "You counted one block; the model stacks n_layer of them."),
        (dict(qkv=1), "attn.c_attn makes queries, keys and values at once: its weight is "
                      "n_embd x 3*n_embd (and its bias 3*n_embd)."),
        (dict(attn_out=False), "You forgot attention's output projection attn.c_proj (n_embd x n_embd, plus a bias)."),
        (dict(inner=d), "The MLP is wider than the model: its hidden size is config.n_inner, "
                        "or 4 x n_embd when n_inner is None."),
        (dict(inner=4 * d), "This config sets n_inner, so the MLP's hidden size is config.n_inner, not 4 x n_embd."),
    ]
    return mistakes


def _count_mistakes(config: Any) -> Mistakes:
    """(wrong total, hint) pairs for the usual ways of miscounting GPT-2, computed when needed."""
    return mistakes_from(lambda **overrides: _formula(config, **overrides), _count_settings(config))


_NO_MODEL_HINT = ("The exercise is to count from the config's numbers: building the model "
                  "(even on the meta device) and counting its parameters reads the answer.")


def _no_model_built(family: str) -> Any:
    """While the learner's count runs, building a GPT-2 or Llama model with transformers is refused."""
    import transformers

    classes = [getattr(transformers, f"{family}{suffix}") for suffix in ("Model", "LMHeadModel", "ForCausalLM")
               if hasattr(transformers, f"{family}{suffix}")]
    return refusing([(cls, "__init__") for cls in classes], f"building a {family} model")


# --------------------------------------------------------------------------- exercise 1

def check_count_parameters(count_parameters: Callable[[Any], int], model: nn.Module) -> None:
    """Check ``count_parameters(config) -> int`` on GPT-2 small, the loaded model and two small configs."""
    from transformers import GPT2Config

    cases = [
        ("GPT-2 small, GPT2Config()", GPT2Config(), None),
        ("the loaded model's config", model.config, _unique_parameter_count(model)),
        ("a small config with n_inner=200", GPT2Config(n_layer=3, n_head=4, n_embd=64, vocab_size=1000, n_positions=128,
                    n_inner=200, bos_token_id=0, eos_token_id=0), None),
        ("a small config with tie_word_embeddings=False",
         GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=500, n_positions=64,
                    tie_word_embeddings=False, bos_token_id=0, eos_token_id=0), None),
    ]
    results = []
    for label, config, expected in cases:
        if expected is None:
            expected = reference_parameter_count(config)
        with _no_model_built("GPT2"):
            got = call_learner(count_parameters, config, name="count_parameters", hints={Refused: _NO_MODEL_HINT})
        check_number(got, expected, f"count_parameters for {label}",
                     known_mistakes=_count_mistakes(config), integer=True,
                     hint="Go through the module tree: embeddings, then one block (ln_1, attn.c_attn, attn.c_proj, "
                          "ln_2, mlp.c_fc, mlp.c_proj), then ln_f.")
        results.append(int(got))
    passed(f"count_parameters: {results[0]:,} for GPT-2 small, {results[1]:,} for the "
           f"loaded model, and right for a config with n_inner set and for one with an untied "
           "output layer.")


# --------------------------------------------------------------------------- exercise 2

def check_conv1d_to_linear(conv1d_to_linear: Callable[[nn.Module], nn.Linear], model: nn.Module) -> None:
    """Check ``conv1d_to_linear(conv) -> nn.Linear`` on a rectangular and a square layer."""
    block = model.transformer.h[0]
    layers = [("mlp.c_fc of block 0", block.mlp.c_fc), ("attn.c_proj of block 0", block.attn.c_proj)]
    generator = torch.Generator().manual_seed(0)
    transpose_hint = ("Conv1D stores its weight as (in, out); nn.Linear stores "
                      "(out, in). The Linear's weight is conv.weight.T.")
    for label, conv in layers:
        with torch.no_grad():
            linear = call_learner(conv1d_to_linear, conv, name=f"conv1d_to_linear({label})",
                                  protect={"weight": conv.weight, "bias": conv.bias})
        if linear is conv:
            fail("conv1d_to_linear returned the Conv1D it was given.",
                 "Create a new nn.Linear(in_features, out_features) and copy the weights in.")
        check_type(linear, nn.Linear, f"conv1d_to_linear({label})",
                   hint="Return a torch.nn.Linear module, not a tensor or a function.")
        n_in, n_out = conv.weight.shape
        if (linear.in_features, linear.out_features) == (n_out, n_in) and n_in != n_out:
            fail(f"Your Linear maps {linear.in_features} -> {linear.out_features} features; "
                 f"{label} maps {n_in} -> {n_out}.", "nn.Linear(in_features, out_features): Conv1D's weight shape is "
                 "(in, out), so in_features = conv.weight.shape[0].")
        check_tensor(linear.weight, conv.weight.T, f"the weight of your Linear for {label}", hint=transpose_hint)
        if linear.weight.untyped_storage().data_ptr() == conv.weight.untyped_storage().data_ptr():
            fail(f"The weight of your Linear for {label} shares its memory with the Conv1D's "
                 "weight (it is a view of it, not a copy): changing one would change the other.",
                 "Build a new nn.Linear and copy the values in: "
                 "linear.weight.copy_(conv.weight.T) under torch.no_grad(), or .clone().")
        if linear.bias is None:
            fail(f"Your Linear for {label} has no bias, but the Conv1D has one.",
                 "Keep nn.Linear's default bias=True and copy conv.bias into it.")
        check_tensor(linear.bias, conv.bias, f"the bias of your Linear for {label}",
                     hint="Copy conv.bias into linear.bias; a vector needs no transposing.")
        x = torch.randn(4, n_in, generator=generator)
        with torch.no_grad():
            check_tensor(linear(x), conv(x), f"the output of your Linear for {label}", bias=conv.bias)
    passed("conv1d_to_linear: same outputs as the Conv1D, for a rectangular and a square layer.")


# --------------------------------------------------------------------------- exercise 3

def _reference_qkv(c_attn: nn.Module, x: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d_model = x.shape[-1]
    qkv = c_attn(x)
    return tuple(t.reshape(x.shape[0], n_head, d_model // n_head).transpose(0, 1) for t in qkv.split(d_model, dim=-1))


def _check_split(split_qkv: Callable[..., Any], attn: nn.Module, n_head: int, where: str) -> None:
    d_model = attn.c_attn.weight.shape[0]
    d_head = d_model // n_head
    seq = 5
    x = torch.randn(seq, d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _reference_qkv(attn.c_attn, x, n_head)
        got = call_learner(split_qkv, attn.c_attn, x, n_head, name=f"split_qkv on {where}",
                           protect={"c_attn.weight": attn.c_attn.weight, "c_attn.bias": attn.c_attn.bias})
    names = ("q", "k", "v")
    got = unpack(got, names, f"split_qkv on {where}")
    biases = attn.c_attn.bias.detach().split(d_model)
    for i, (name, got_t, exp_t) in enumerate(zip(names, got, expected)):
        mistakes = [(other, f"This is {names[j]}, not {name}: c_attn's output is "
                            "[q | k | v] along the last axis, in that order.")
                    for j, other in enumerate(expected) if j != i]
        flat = exp_t.transpose(0, 1).reshape(seq, d_model)
        mistakes.append((flat.reshape(n_head, seq, d_head),
                         "You reshaped (seq, d_model) straight to (n_head, seq, d_head), which mixes positions and "
                         "heads. View as (seq, n_head, d_head) first, then .transpose(0, 1)."))
        check_tensor(got_t, exp_t, f"{name} (element {i} of your tuple) on {where}",
                     bias=biases[i].reshape(n_head, 1, d_head), known_mistakes=mistakes,
                     hint="q, k, v = (x @ W + b).split(d_model, dim=-1); then each .view(seq, n_head, "
                          "d_head).transpose(0, 1), with d_head = d_model // n_head.")


def check_split_qkv(split_qkv: Callable[..., Any], model: nn.Module) -> None:
    """Check ``split_qkv(c_attn, x, n_head) -> (q, k, v)``, each (n_head, seq, d_head)."""
    n_head = model.config.n_head
    d_head = model.config.n_embd // n_head
    _check_split(split_qkv, model.transformer.h[0].attn, n_head, "block 0")
    other = second_gpt2(model)
    _check_split(split_qkv, other.transformer.h[0].attn, other.config.n_head,
                 f"a second model's block 0 ({other.config.n_head} heads of "
                 f"{other.config.n_embd // other.config.n_head})")
    passed(f"split_qkv: q, k and v each have shape ({n_head}, 5, {d_head}) and match "
           f"the block's own c_attn, and match a second model's c_attn with "
           f"{other.config.n_head} heads.")


# --------------------------------------------------------------------------- exercise 4

_LENGTH_HINT = ("The first 8 bytes hold the header's length as an unsigned little-endian 64-bit integer: "
                "struct.unpack('<Q', f.read(8))[0]. Then read exactly that many bytes and give them to json.loads.")


def _reference_header(path: Path) -> dict[str, Any]:
    """The header, read with struct and json (tests hold it to the safetensors library's view)."""
    with open(path, "rb") as f:
        return json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))


class _CountingReader:
    """The file object ``open`` returned, counting the bytes its reads hand out."""

    def __init__(self, handle: Any, counter: dict[str, int]) -> None:
        self._handle, self._counter = handle, counter

    def _count(self, data: Any) -> Any:
        size = data if isinstance(data, int) else sum(map(len, data)) if isinstance(data, list) \
            else len(data) if isinstance(data, (bytes, bytearray, str)) else 0  # readinto: an int
        self._counter["bytes"] += size or 0
        return data

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._handle, name)
        reads = ("read", "read1", "readline", "readlines", "readinto", "readinto1")
        return (lambda *args: self._count(attr(*args))) if name in reads else attr

    def __iter__(self) -> _CountingReader:
        return self

    def __next__(self) -> Any:
        return self._count(next(self._handle))

    def __enter__(self) -> _CountingReader:
        self._handle.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._handle.__exit__(*exc)


@contextlib.contextmanager
def _count_bytes_read(path: Path) -> Iterator[dict[str, int]]:
    """Count the bytes read from ``path`` through Python's ``open`` (safetensors, mmap bypass it)."""
    import builtins
    import io

    target, original = path.resolve(), builtins.open
    counter = {"bytes": 0, "opens": 0}

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        handle = original(file, *args, **kwargs)
        with contextlib.suppress(OSError, ValueError):
            if isinstance(file, (str, bytes, os.PathLike)) and Path(os.fsdecode(file)).resolve() == target:
                counter["opens"] += 1
                return _CountingReader(handle, counter)
        return handle

    builtins.open = io.open = counting_open
    try:
        yield counter
    finally:
        builtins.open = io.open = original


_HEADER_ONLY_HINT = ("Read the file with open, struct and json only: 8 bytes for the length, then exactly that many "
                     "bytes of JSON. safetensors' load_file, safe_open and get_tensor (and torch loaders) check and "
                     "read the tensor data, which is exactly what this exercise avoids.")


def check_read_safetensors_header(read_safetensors_header: Callable[[Any], Any], path: str | Path) -> None:
    """Check ``read_safetensors_header(path) -> dict`` against the file at ``path``."""
    path = Path(path)
    expected = _reference_header(path)
    with open(path, "rb") as f:
        (header_length,) = struct.unpack("<Q", f.read(8))
    header_end = 8 + header_length
    file_size = path.stat().st_size
    with _count_bytes_read(path) as counter:
        got = call_learner(read_safetensors_header, path, name="read_safetensors_header",
                           hints={json.JSONDecodeError: _LENGTH_HINT, UnicodeDecodeError: _LENGTH_HINT,
                                  struct.error: "struct.unpack('<Q', data) needs exactly 8 bytes: data = f.read(8).",
                                  OverflowError: _LENGTH_HINT, MemoryError: _LENGTH_HINT})
    if isinstance(got, int) and not isinstance(got, bool):
        fail(f"read_safetensors_header returned an int ({got:,}), probably the header length.",
             "Now read that many bytes after the first 8 and parse them with json.loads.")
    if isinstance(got, (bytes, bytearray, str)):
        fail(f"read_safetensors_header returned {type(got).__name__}, the raw header text.",
             "Parse it with json.loads(...) and return the dict.")
    check_type(got, dict, "read_safetensors_header(path)", hint="Return the parsed JSON header: a dict.")
    if any(isinstance(value, torch.Tensor) for value in got.values()):
        fail("Your dict holds tensors: read_safetensors_header loaded the tensor data.", _HEADER_ONLY_HINT)
    _compare_header(got, expected)
    if counter["bytes"] > header_end:
        fail(f"read_safetensors_header read {counter['bytes']:,} bytes of the file, but the "
             f"header ends at byte {header_end:,} (of {file_size:,}): it also read "
             f"{counter['bytes'] - header_end:,} bytes of tensor data.",
             "Read 8 bytes, then exactly the number of bytes they announce, and stop. f.read() without a size (or "
             "Path.read_bytes()) reads the whole file, tensors included.")
    with tempfile.TemporaryDirectory() as folder:
        header_only = Path(folder) / "header_only.safetensors"
        with open(path, "rb") as f:
            header_only.write_bytes(f.read(header_end))
        on_copy = call_learner(
            read_safetensors_header, header_only,
            name=f"On a copy of the file cut off right after its header ({header_end:,} bytes, "
                 "no tensor data at all), read_safetensors_header",
            hints={Exception: "A reader that touches only the header works on that copy; yours "
                              "needs the tensor data. " + _HEADER_ONLY_HINT})
    if on_copy != expected:
        fail("On a copy of the file cut off right after its header (no tensor data), "
             "read_safetensors_header returned a different result than on the full file.", _HEADER_ONLY_HINT)
    dtypes = sorted({e["dtype"] for k, e in expected.items() if k != "__metadata__"})
    n_tensors = sum(1 for k in expected if k != "__metadata__")
    how = (f"open() handed out {counter['bytes']:,} of its {file_size:,} bytes"
           if counter["opens"] else "it was not read through Python's open()")
    passed(f"read_safetensors_header: {n_tensors} tensors, dtypes {', '.join(dtypes)}; "
           f"{how}, and it gives the same header for a copy cut off right after the header "
           "(no tensor data at all).")


def _compare_header(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Fail unless the learner's header equals the file's, naming the first difference."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    if missing == ["__metadata__"] and not extra:
        fail("Your dict has every tensor but not the '__metadata__' entry.",
             "Return the header exactly as json.loads gives it, '__metadata__' included.")
    if missing:
        fail(f"{len(missing)} of the {len(expected)} header entries are missing, e.g. "
             f"{missing[0]!r}.", "Parse the whole header: read exactly the number of bytes the first 8 bytes announce.")
    if extra:
        fail(f"Your dict has entries the header does not have, e.g. {extra[0]!r}.",
             "Return the parsed header as it is.")
    for name, entry in expected.items():
        if name == "__metadata__":
            if got[name] != entry:
                fail("The '__metadata__' entry differs from the file's.")
            continue
        mine = got[name]
        if not isinstance(mine, dict):
            fail(f"got[{name!r}] should be a dict with dtype, shape and data_offsets, "
                 f"got {type(mine).__name__}.")
        for key in ("dtype", "shape", "data_offsets"):
            if mine.get(key) != entry[key]:
                fail(f"For {name!r}, {key} is {mine.get(key)!r}; the file says {entry[key]!r}.",
                     "Return the values json.loads gives you, unchanged.")


# --------------------------------------------------------------------------- exercise 5

def _check_size(model_size_mb: Callable[[nn.Module, torch.dtype], float], model: nn.Module, where: str) -> int:
    """model_size_mb on one model for four dtypes; returns its parameter count."""
    n_params = _unique_parameter_count(model)
    n_state = sum(t.numel() for t in model.state_dict().values())
    current = next(model.parameters()).element_size()
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int8):
        nbytes = torch.empty((), dtype=dtype).element_size()
        expected = n_params * nbytes / 1e6
        mistakes = [
            (n_state * nbytes / 1e6, "You counted the tied lm_head weight a second time (state_dict lists it under two "
                                     "names). model.parameters() gives each tensor once."),
            (n_params * current / 1e6, f"You used the model's own element size ({current} "
                                       f"bytes); the size asked for is in {dtype}, which "
                                       f"takes {nbytes} byte(s) per value: dtype.itemsize."),
            (n_params * nbytes / 2**20, "That is MiB (2**20 bytes). Use MB: 10**6 bytes."),
            (n_params * nbytes, "That is in bytes: divide by 10**6 for MB."),
            (n_params * nbytes * 8 / 1e6, "That is megabits: a byte has 8 bits."),
            (n_params / 1e6, "That is the number of parameters in millions: multiply by the bytes per value."),
        ]
        got = call_learner(model_size_mb, model, dtype, name=f"model_size_mb({where}, {dtype})", model=model)
        check_number(got, expected, f"model_size_mb({where}, {dtype})", known_mistakes=mistakes,
                     rel_tol=1e-6, hint=f"{dtype} takes {nbytes} byte(s) per value.")
    return n_params


def check_model_size_mb(model_size_mb: Callable[[nn.Module, torch.dtype], float], model: nn.Module) -> None:
    """Check ``model_size_mb(model, dtype) -> float`` (MB = 10**6 bytes) for four dtypes."""
    n_params = _check_size(model_size_mb, model, "model")
    _check_size(model_size_mb, second_gpt2(model), "a second model")
    passed(f"model_size_mb: {n_params * 4 / 1e6:,.1f} MB in float32, "
           f"{n_params * 2 / 1e6:,.1f} MB in float16/bfloat16, {n_params / 1e6:,.1f} MB in int8; "
           "right for a second model too, and the model is left unchanged.")


# --------------------------------------------------------------------------- exercise 6: Llama 3 8B from its config
#
# Moved here from chapter 01 with the architecture-from-config section.

def llama_config(row: dict[str, str]) -> dict[str, Any]:
    """A row of data/model_configs.csv as the keys of a Llama/Mistral ``config.json``."""
    return {
        "vocab_size": int(row["vocab_size"]),
        "hidden_size": int(row["hidden_size"]),
        "intermediate_size": int(row["intermediate_size"]),
        "num_hidden_layers": int(row["num_layers"]),
        "num_attention_heads": int(row["num_heads"]),
        "num_key_value_heads": int(row["num_kv_heads"]),
        "head_dim": int(row["head_dim"]),
        "tie_word_embeddings": row["tied_embeddings"] == "yes",
    }


def reference_llama_count(config: dict[str, Any]) -> int:
    """Parameters of ``LlamaForCausalLM(LlamaConfig(**config))``, built on the meta device."""
    return _meta_count("Llama", json.dumps(config, sort_keys=True))


def _llama_formula(config: dict[str, Any], *, untied: bool | None = None, kv_heads: int | None = None,
             mlp_matrices: int = 3, norm_size: int = 1, block_norms: bool = True, final_norm: bool = True,
             biases: bool = False, head_dim: int | None = None) -> int:
    """The parameter count with one piece changeable, to compute the usual mistakes."""
    v, d, inner = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config["num_key_value_heads"] if kv_heads is None else kv_heads
    hd = head_dim or config.get("head_dim") or d // heads
    tied = config["tie_word_embeddings"] if untied is None else not untied
    attention = d * heads * hd + 2 * d * kv * hd + heads * hd * d
    if biases:
        attention += heads * hd + 2 * kv * hd + d
    mlp = mlp_matrices * d * inner
    norms = 2 * norm_size * d if block_norms else 0
    block = attention + mlp + norms
    head = 0 if tied else v * d
    return v * d + head + config["num_hidden_layers"] * block + (norm_size * d if final_norm else 0)


def _llama_settings(config: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The usual ways of miscounting a Llama-style model: (_llama_formula's settings, hint)."""
    return [
        (dict(untied=False), "This model does not tie its output layer to the token embedding (tie_word_embeddings is "
                             "false): lm_head is a second vocab_size x hidden_size matrix."),
        (dict(untied=True), "This config ties the output layer to the embedding "
                            "(tie_word_embeddings is true): count that matrix once."),
        (dict(kv_heads=config["num_attention_heads"]),
         "Grouped-query attention: k_proj and v_proj have num_key_value_heads x head_dim outputs, "
         "not num_attention_heads x head_dim. Only q_proj and o_proj are hidden_size x hidden_size."),
        (dict(mlp_matrices=2), "SwiGLU has three matrices: gate_proj and up_proj (hidden -> "
                               "intermediate) and down_proj (intermediate -> hidden)."),
        (dict(block_norms=False, final_norm=False), "You forgot the RMSNorms: two per layer (input and post-attention) "
                                                    "and one at the end, each hidden_size weights."),
        (dict(block_norms=False), "You forgot the two RMSNorms in every layer (input_layernorm and "
                                  "post_attention_layernorm)."),
        (dict(final_norm=False), "You forgot the final norm (model.norm) after the last layer."),
        (dict(norm_size=2), "RMSNorm has a weight but no bias: hidden_size parameters, not 2 x hidden_size."),
        (dict(biases=True), "Llama's linear layers have no biases (attention_bias is false)."),
        (dict(head_dim=config["hidden_size"] // config["num_attention_heads"]),
         "The config gives head_dim; use it. It need not be hidden_size / num_attention_heads "
         "(here it is not), and q_proj is hidden_size x (num_attention_heads x head_dim)."),
    ]


def _llama_cases() -> list[tuple[str, dict[str, Any]]]:
    rows = {row["model"]: row for row in data_rows("model_configs.csv")}
    return [
        ("Llama 3 8B (data/model_configs.csv)", llama_config(rows["Llama 3 8B"])),
        ("Mistral 7B (data/model_configs.csv)", llama_config(rows["Mistral 7B"])),
        ("a small tied config with 2 key-value heads",
         {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 200, "num_hidden_layers": 3,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True}),
        ("a small config whose head_dim (32) is not hidden_size / num_attention_heads (16)",
         {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "tie_word_embeddings": False}),
    ]


def check_count_llama_parameters(count_llama_parameters: Callable[[dict[str, Any]], int]) -> None:
    """Check ``count_llama_parameters(config) -> int`` on Llama 3 8B, Mistral 7B and a small config."""
    results = []
    for label, config in _llama_cases():
        expected = reference_llama_count(config)
        with _no_model_built("Llama"):
            got = call_learner(count_llama_parameters, dict(config), name="count_llama_parameters",
                               hints={KeyError: "Use the config's keys: " + ", ".join(config) + ".",
                                      Refused: _NO_MODEL_HINT})
        check_number(got, expected, f"count_llama_parameters for {label}",
                     known_mistakes=mistakes_from(lambda **s: _llama_formula(config, **s),
                                                  _llama_settings(config)), integer=True,
                     hint="Embedding, then per layer: q, k, v, o projections, gate, up, down, two "
                          "norms; then the final norm and, if untied, lm_head.")
        results.append(int(got))
    passed(f"count_llama_parameters: {results[0]:,} for Llama 3 8B and {results[1]:,} for Mistral 7B "
           "(the totals transformers builds from their configs), and right for a small tied config "
           "and for one whose head_dim is not hidden_size / num_attention_heads.")
