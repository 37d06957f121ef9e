"""Cheaper copies of the served weights, as a provider might swap in behind the same name.

* ``int8``: every weight matrix (attention, MLP and the tied embedding / output head)
  stored as 8-bit integers with one scale per output channel, and computed back in
  float32 (weight-only int8 quantisation, as many serving stacks do). GPT-2 in Hugging
  Face uses ``Conv1D`` layers, whose weight is (in, out): the scale is per column there.
  It is deterministic, so the same request gets the same answer while it is served.
* ``fp16``: the whole model in float16, weights and arithmetic, as on a GPU.
  (TinyGPT's weights are stored in float16 already, so here the arithmetic is what changes.)
* ``bf16``: weights rounded through bfloat16 (8 bits of mantissa), computed in float32.
* ``original``: the weights the server started with.

Each changes the returned logprobs a little and the text sometimes; the name the model is
served under does not change, but ``system_fingerprint`` does (:func:`system_fingerprint`,
unless the operator hides it).
"""

from __future__ import annotations

import hashlib

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

DERIVED_VARIANTS: dict[str, str] = {
    "original": "the weights the server started with",
    "int8": "weight-only int8, one scale per output channel",
    "fp16": "float16 weights and arithmetic",
    "bf16": "weights rounded through bfloat16",
}


def _round_int8(weight: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Round ``weight`` to int8 with one symmetric scale per slice along ``channel_dim``."""
    reduce_dims = [d for d in range(weight.dim()) if d != channel_dim]
    scale = weight.abs().amax(dim=reduce_dims, keepdim=True).clamp(min=1e-12) / 127.0
    return (weight / scale).round().clamp(-127, 127) * scale


@torch.no_grad()
def quantise_int8_(model: nn.Module) -> int:
    """Round every weight matrix of ``model`` through int8 in place; return how many were rounded."""
    from transformers.pytorch_utils import Conv1D

    done: set[int] = set()
    for module in model.modules():
        if isinstance(module, Conv1D):  # weight (in, out): one scale per output column
            weight, channel = module.weight, 1
        elif isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.dim() == 2:
            weight, channel = module.weight, 0  # Linear (out, in) and Embedding (tokens, d): per row
        else:
            continue
        if id(weight) in done:
            continue  # the output head shares its weight with the token embedding
        if isinstance(module, nn.Embedding) and module is not model.get_input_embeddings():
            continue  # position embeddings stay as they are
        weight.copy_(_round_int8(weight.float(), channel).to(weight.dtype))
        done.add(id(weight))
    return len(done)


@torch.no_grad()
def round_bf16_(model: nn.Module) -> None:
    """Round every parameter of ``model`` through bfloat16, in place (it still computes in float32)."""
    for parameter in model.parameters():
        parameter.copy_(parameter.to(torch.bfloat16).to(parameter.dtype))


def apply_variant_(model: nn.Module, variant: str) -> nn.Module:
    """Turn ``model`` (in its original float32 form) into ``variant``; returns the model to serve."""
    if variant == "original":
        return model
    if variant == "int8":
        quantise_int8_(model)
        return model
    if variant == "fp16":
        return model.half()
    if variant == "bf16":
        round_bf16_(model)
        return model
    raise ValueError(f"unknown variant {variant!r}")


# ----- system_fingerprint ---------------------------------------------------------------------


def weights_digest(model: nn.Module) -> str:
    """A digest of every tensor the model computes with (names, dtypes, shapes and bytes).

    Any change to the numbers (another model, a quantised or half-precision copy) changes it;
    loading the same weights again does not. Shared tensors (the tied output head) count once.
    """
    digest = hashlib.blake2b(digest_size=16)
    seen: set[int] = set()
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=False).items():
            if tensor.data_ptr() in seen and tensor.numel() > 0:
                continue
            seen.add(tensor.data_ptr())
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
                          if tensor.numel() else b"")
    return digest.hexdigest()


def system_fingerprint(name: str, variant: str, digest: str) -> str:
    """OpenAI-style ``fp_`` + 10 hex digits for the served weights: a hash of the model's name,
    the variant and :func:`weights_digest`. It says *that* the backend changed, not *what* it is:
    neither the name nor the weights can be read back from it (someone holding the same weights
    and name could only recompute it and see that it matches)."""
    return "fp_" + hashlib.blake2b(f"{name}\0{variant}\0{digest}".encode(), digest_size=5).hexdigest()


class FingerprintRequest(BaseModel):
    """POST /admin/system_fingerprint (operator only): ``{"shown": false}`` hides the fingerprint
    (clients then get ``system_fingerprint: null``), ``{"shown": true}`` shows it again."""

    model_config = ConfigDict(extra="forbid", strict=True)
    shown: bool
