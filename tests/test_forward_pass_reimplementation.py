"""GPT-2's forward pass written from the raw tensors matches transformers' logits within 1e-4.

Two reimplementations are held to transformers:
- the lesson's own readable version, taken from the cells of notebooks/04_forward_pass.ipynb
  tagged ``reimplementation`` and executed here, so the lesson cannot drift from what is tested;
- the reference in glassbox/exercise_checks/forward_pass.py that the exercise checks use
  (its mistake variants are checked to differ from it, so every named mistake can be seen).

Both run on TinyGPT (trained) and on gpt2-untrained (GPT-2 small's full shape).
"""

from __future__ import annotations

import math

import nbformat
import pytest
import torch
from safetensors.torch import load_file

from glassbox import load_model
from glassbox.exercise_checks import forward_pass as fp
from glassbox.exercise_checks.feedback import close
from glassbox.paths import REPO_DIR, TINYGPT_WEIGHTS_DIR

LESSON = REPO_DIR / "notebooks" / "04_forward_pass.ipynb"
TAG = "reimplementation"
TOLERANCE = 1e-4
PROMPT = ("<|endoftext|>It was a sunny day in the village. Mia found a red ball near the river. "
          "The nurse herself was happy.")


def lesson_cells() -> list[str]:
    nb = nbformat.read(LESSON, as_version=4)
    return [cell.source for cell in nb.cells
            if cell.cell_type == "code" and TAG in cell.metadata.get("tags", [])]


def lesson_namespace() -> dict:
    """Execute the lesson's reimplementation cells (they use only math and torch)."""
    namespace: dict = {"math": math, "torch": torch}
    for index, source in enumerate(lesson_cells()):
        exec(compile(source, f"{LESSON.name} [{TAG} cell {index}]", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def lesson() -> dict:
    return lesson_namespace()


@pytest.fixture(scope="module", params=["tinygpt", "gpt2-untrained"])
def loaded(request):
    model, tokenizer = load_model(request.param, verbose=False)
    return request.param, model, tokenizer


def transformers_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids[None]).logits[0]


def test_lesson_shows_the_reimplementation_in_under_50_lines() -> None:
    sources = lesson_cells()
    assert len(sources) == 3, "expected the three tagged cells: pieces, attention, block and model"
    lines = [line for source in sources for line in source.splitlines()]
    assert 35 <= len(lines) < 50, len(lines)  # the lesson says "under 50 lines"
    text = "\n".join(sources)
    assert "import" not in text, "the lesson's reimplementation should use only math and torch"
    assert "model" not in text.replace("d_model", ""), "it must not touch the loaded model"


def test_lesson_reimplementation_matches_transformers(lesson, loaded) -> None:
    name, model, tokenizer = loaded
    ids = torch.tensor(tokenizer.encode(PROMPT))
    expected = transformers_logits(model, ids)
    with torch.no_grad():
        got = lesson["gpt2_forward"](ids, model.state_dict(), model.config)
    assert got.shape == expected.shape == (len(ids), model.config.vocab_size)
    largest = float((got - expected).abs().max())
    assert largest < TOLERANCE, f"{name}: largest difference {largest:.2e}"
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_reference_matches_transformers(loaded) -> None:
    name, model, tokenizer = loaded
    ids = torch.tensor(tokenizer.encode(PROMPT))
    expected = transformers_logits(model, ids)
    with torch.no_grad():
        got = fp.reference_forward(ids, model.state_dict(), model.config)
    largest = float((got - expected).abs().max())
    assert largest < TOLERANCE, f"{name}: largest difference {largest:.2e}"


def test_lesson_reimplementation_on_the_raw_file_and_full_context(lesson) -> None:
    """TinyGPT's shipped safetensors file (float16, no lm_head entry) and a 128-token input."""
    model, tokenizer = load_model("tinygpt", verbose=False)
    raw = {name: t.float() for name, t in load_file(TINYGPT_WEIGHTS_DIR / "model.safetensors").items()}
    assert "lm_head.weight" not in raw
    text = PROMPT + " The cat ran to the garden." * 30
    ids = torch.tensor(tokenizer.encode(text)[: model.config.n_positions])
    assert len(ids) == model.config.n_positions
    expected = transformers_logits(model, ids)
    with torch.no_grad():
        got = lesson["gpt2_forward"](ids, raw, model.config)
    assert float((got - expected).abs().max()) < TOLERANCE


def test_reference_parts_match_the_model_modules() -> None:
    """Block by block and head by head, against the model's own modules (eager attention)."""
    model, tokenizer = load_model("tinygpt", verbose=False)
    model.set_attn_implementation("eager")
    ids = torch.tensor(tokenizer.encode(PROMPT))
    sd = model.state_dict()
    with torch.no_grad():
        out = model(ids[None], output_hidden_states=True, output_attentions=True)
        stream = out.hidden_states[0][0]
        for layer, block in enumerate(model.transformer.h):
            x = block.ln_1(stream)
            for head in range(model.config.n_head):
                pattern, _ = fp.reference_attention_head(
                    x, sd[f"transformer.h.{layer}.attn.c_attn.weight"],
                    sd[f"transformer.h.{layer}.attn.c_attn.bias"], model.config.n_head, head)
                assert torch.allclose(pattern, out.attentions[layer][0, head], atol=1e-6)
            ln = fp.reference_layer_norm(stream, block.ln_1.weight, block.ln_1.bias,
                                         model.config.layer_norm_epsilon)
            assert torch.allclose(ln, x, atol=1e-5)
            stream = fp.reference_block(stream, sd, layer, model.config)
            if layer + 1 < model.config.n_layer:
                assert torch.allclose(stream, out.hidden_states[layer + 1][0], atol=1e-5)


def test_every_named_mistake_changes_the_logits() -> None:
    """A mistake that gives the right numbers could never be named: each must change them by more
    than check_gpt2_forward accepts."""
    model, tokenizer = load_model("tinygpt", verbose=False)
    ids = torch.tensor(tokenizer.encode(fp.CHECK_PROMPT))
    sd = model.state_dict()
    with torch.no_grad():
        right = fp.reference_forward(ids, sd, model.config)
        variants = [variant for variant, _ in fp._block_mistakes()]
        variants += [fp.Variant(ln_f=False), fp.Variant(positions="none"),
                     fp.Variant(positions="shifted")]
        for variant in variants:
            wrong = fp.reference_forward(ids, sd, model.config, variant)
            different = torch.isnan(wrong).any() or not close(wrong, right, fp._LOGITS_RTOL, fp._LOGITS_ATOL)
            assert different, variant
