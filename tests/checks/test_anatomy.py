"""Chapter 02's checks: right answers pass, plausible wrong answers fail with their hint.

The checks are model-agnostic, so a tiny random GPT-2 (built here in milliseconds)
exercises them as well as the real thing. Each test calls a check function directly
with a deliberately wrong answer and asserts on the message the learner would see.
"""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from glassbox.exercise_checks.anatomy import (
    check_conv1d_to_linear,
    check_count_llama_parameters,
    check_count_parameters,
    check_model_size_mb,
    check_read_safetensors_header,
    check_split_qkv,
    llama_config,
    reference_llama_count,
    reference_parameter_count,
)
from glassbox.paths import DATA_DIR
from glassbox.exercise_checks.feedback import ExerciseFailed, check_number, check_tensor
from checks.conftest import fails_with, passes, random_gpt2


@pytest.fixture
def model() -> GPT2LMHeadModel:
    # Fresh GPT-2 layers start with zero biases; the "forgot the bias" hints need them not to be.
    return random_gpt2(vocab_size=100, n_positions=16)


# ----------------------------------------------------------------- count_parameters

def count_ok(config) -> int:
    d, v, p = config.n_embd, config.vocab_size, config.n_positions
    inner = config.n_inner or 4 * d
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (2 * d * inner + inner + d)
    head = 0 if config.tie_word_embeddings else v * d
    return v * d + p * d + config.n_layer * block + 2 * d + head


def test_reference_count_is_gpt2_small_built_on_meta() -> None:
    with torch.device("meta"):
        expected = sum(p.numel() for p in GPT2LMHeadModel(GPT2Config()).parameters())
    assert reference_parameter_count(GPT2Config()) == expected


def test_count_parameters_accepts_right_answer(model, capsys) -> None:
    check_count_parameters(count_ok, model)
    out = capsys.readouterr().out
    assert out.startswith("✓") and out.count("\n") == 1
    assert f"{reference_parameter_count(GPT2Config()):,}" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda c: count_ok(c) + c.vocab_size * c.n_embd, "ties it to the token embedding"),
    (lambda c: count_ok(c) - c.n_positions * c.n_embd, "position embeddings"),
    (lambda c: count_ok(c) - 2 * c.n_embd, "final LayerNorm ln_f"),
    (lambda c: count_ok(c) - c.n_layer * (3 * c.n_embd + c.n_embd + (c.n_inner or 4 * c.n_embd)
                                          + c.n_embd), "biases"),
    (lambda c: count_ok(c) - c.n_layer * 2 * c.n_embd * c.n_embd - c.n_layer * 2 * c.n_embd,
     "queries, keys and values"),
])
def test_count_parameters_known_mistakes(model, wrong, hint) -> None:
    message = fails_with(check_count_parameters, wrong, model, match=hint)
    assert "expected" in message and "got" in message


def test_count_parameters_ignoring_n_inner_is_caught(model) -> None:
    def always_4x(config):
        return count_ok(GPT2Config.from_dict({**config.to_dict(), "n_inner": None}))
    fails_with(check_count_parameters, always_4x, model, match="n_inner")


@pytest.mark.parametrize("answer, hint", [
    (None, "return"), (float("nan"), "nan"), ("124M", "should be a number"),
    (1.5, "whole number"),
])
def test_count_parameters_bad_types(model, answer, hint) -> None:
    fails_with(check_count_parameters, lambda c: answer, model, match=hint)


def test_count_parameters_double_counts_by_factor(model) -> None:
    fails_with(check_count_parameters, lambda c: 2 * count_ok(c), model, match="factor of 2")


def test_learner_crash_becomes_feedback_and_keeps_the_cause(model) -> None:
    def crashes(config):
        return config.n_embed * 2  # typo: AttributeError
    with pytest.raises(ExerciseFailed) as info:
        check_count_parameters(crashes, model)
    assert "count_parameters raised AttributeError" in str(info.value)
    assert isinstance(info.value.__cause__, AttributeError)


def test_not_implemented_passes_through(model) -> None:
    def stub(config):
        raise NotImplementedError("todo")
    with pytest.raises(NotImplementedError):
        check_count_parameters(stub, model)


# ----------------------------------------------------------------- conv1d_to_linear

def to_linear_ok(conv) -> nn.Linear:
    n_in, n_out = conv.weight.shape
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    return linear


def test_conv1d_to_linear_accepts_right_answer(model, capsys) -> None:
    check_conv1d_to_linear(to_linear_ok, model)
    assert capsys.readouterr().out.startswith("✓")


def test_conv1d_to_linear_forgot_transpose(model) -> None:
    def no_transpose(conv):
        linear = nn.Linear(*conv.weight.shape)
        linear.weight = nn.Parameter(conv.weight.detach().clone())
        linear.bias = nn.Parameter(conv.bias.detach().clone())
        return linear
    fails_with(check_conv1d_to_linear, no_transpose, model, match="transpose")


def test_conv1d_to_linear_square_layer_without_transpose(model) -> None:
    def transpose_only_if_needed(conv):  # right for rectangular layers only
        linear = to_linear_ok(conv)
        if conv.weight.shape[0] == conv.weight.shape[1]:
            with torch.no_grad():
                linear.weight.copy_(conv.weight)
        return linear
    message = fails_with(check_conv1d_to_linear, transpose_only_if_needed, model,
                         match="transpose")
    assert "attn.c_proj" in message


def test_conv1d_to_linear_missing_bias(model) -> None:
    def no_bias(conv):
        linear = nn.Linear(*conv.weight.shape, bias=False)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)
        return linear
    fails_with(check_conv1d_to_linear, no_bias, model, match="has no bias")


def test_conv1d_to_linear_bias_not_copied(model) -> None:
    def bias_zero(conv):
        linear = to_linear_ok(conv)
        with torch.no_grad():
            linear.bias.zero_()
        return linear
    fails_with(check_conv1d_to_linear, bias_zero, model, match="copy conv.bias")


def test_conv1d_to_linear_swapped_features(model) -> None:
    def swapped(conv):
        n_in, n_out = conv.weight.shape
        return nn.Linear(n_out, n_in)
    fails_with(check_conv1d_to_linear, swapped, model, match="in_features")


def test_conv1d_to_linear_returns_tensor(model) -> None:
    fails_with(check_conv1d_to_linear, lambda conv: conv.weight.T, model, match="nn.Linear")


def test_conv1d_to_linear_in_place_edit_is_caught(model) -> None:
    def in_place(conv):
        with torch.no_grad():
            conv.weight.mul_(1.0).add_(1.0)
        return to_linear_ok(conv)
    fails_with(check_conv1d_to_linear, in_place, model, match="in place")


# ----------------------------------------------------------------- split_qkv

def split_ok(c_attn, x, n_head):
    seq, d = x.shape
    q, k, v = (x @ c_attn.weight + c_attn.bias).split(d, dim=-1)
    return tuple(t.reshape(seq, n_head, d // n_head).transpose(0, 1) for t in (q, k, v))


def test_split_qkv_accepts_right_answer(model, capsys) -> None:
    check_split_qkv(split_ok, model)
    assert capsys.readouterr().out.startswith("✓")


def test_split_qkv_swapped_q_and_k(model) -> None:
    def swapped(c_attn, x, n_head):
        q, k, v = split_ok(c_attn, x, n_head)
        return k, q, v
    fails_with(check_split_qkv, swapped, model, match="This is k, not q")


def test_split_qkv_naive_reshape(model) -> None:
    def naive(c_attn, x, n_head):
        seq, d = x.shape
        q, k, v = c_attn(x).split(d, dim=-1)
        return tuple(t.reshape(n_head, seq, d // n_head) for t in (q, k, v))
    fails_with(check_split_qkv, naive, model, match="straight to (n_head, seq, d_head)")


def test_split_qkv_forgot_transpose(model) -> None:
    def no_transpose(c_attn, x, n_head):
        return tuple(t.transpose(0, 1) for t in split_ok(c_attn, x, n_head))
    message = fails_with(check_split_qkv, no_transpose, model, match="wrong order")
    assert "permute(1, 0, 2)" in message


def test_split_qkv_forgot_bias(model) -> None:
    def no_bias(c_attn, x, n_head):
        seq, d = x.shape
        q, k, v = (x @ c_attn.weight).split(d, dim=-1)
        return tuple(t.reshape(seq, n_head, d // n_head).transpose(0, 1) for t in (q, k, v))
    fails_with(check_split_qkv, no_bias, model, match="forgot to add the bias")


def test_split_qkv_returns_one_tensor(model) -> None:
    fails_with(check_split_qkv, lambda c, x, n: c(x), model, match="tuple")


# ----------------------------------------------------------------- safetensors header

@pytest.fixture
def safetensors_file(model, tmp_path) -> Path:
    from safetensors.torch import save_model
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    return path


def header_ok(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def test_header_accepts_right_answer(safetensors_file, capsys) -> None:
    check_read_safetensors_header(header_ok, safetensors_file)
    assert capsys.readouterr().out.startswith("✓")


def test_header_big_endian(safetensors_file) -> None:
    def big_endian(path):
        with open(path, "rb") as f:
            (n,) = struct.unpack(">Q", f.read(8))
            return json.loads(f.read(n))
    fails_with(check_read_safetensors_header, big_endian, safetensors_file,
               match="little-endian")


def test_header_returns_length(safetensors_file) -> None:
    def length_only(path):
        with open(path, "rb") as f:
            return struct.unpack("<Q", f.read(8))[0]
    fails_with(check_read_safetensors_header, length_only, safetensors_file,
               match="header length")


def test_header_not_parsed(safetensors_file) -> None:
    def raw(path):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode()
    fails_with(check_read_safetensors_header, raw, safetensors_file, match="json.loads")


def test_header_dropped_metadata(safetensors_file) -> None:
    def no_meta(path):
        header = header_ok(path)
        header.pop("__metadata__", None)
        return header
    fails_with(check_read_safetensors_header, no_meta, safetensors_file, match="__metadata__")


def test_header_reads_too_few_bytes(safetensors_file) -> None:
    def short(path):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(n // 2))
    fails_with(check_read_safetensors_header, short, safetensors_file, match="little-endian")


def test_header_none(safetensors_file) -> None:
    fails_with(check_read_safetensors_header, lambda p: None, safetensors_file, match="return")


def test_header_right_answer_reports_bytes_read(safetensors_file, capsys) -> None:
    check_read_safetensors_header(header_ok, safetensors_file)
    out = capsys.readouterr().out
    with open(safetensors_file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    assert f"handed out {8 + n:,} of its {safetensors_file.stat().st_size:,} bytes" in out
    assert "cut off right after the header" in out


def test_header_right_answer_with_path_open_passes(safetensors_file, capsys) -> None:
    def via_path(path):
        with Path(path).open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(n).decode("utf-8"))
    check_read_safetensors_header(via_path, safetensors_file)
    assert capsys.readouterr().out.startswith("✓")


def test_header_reading_the_whole_file_fails(safetensors_file) -> None:
    def whole_file(path):
        data = Path(path).read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        return json.loads(data[8:8 + n])
    message = fails_with(check_read_safetensors_header, whole_file, safetensors_file,
                         match="bytes of tensor data")
    assert f"{safetensors_file.stat().st_size:,} bytes" in message
    assert "f.read() without a size" in message


def test_header_reading_the_rest_after_the_header_fails(safetensors_file) -> None:
    def reads_on(path):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            f.read()  # "just to be sure we reached the end"
        return header
    fails_with(check_read_safetensors_header, reads_on, safetensors_file,
               match="bytes of tensor data")


def test_header_with_load_file_first_fails_on_header_only_copy(safetensors_file) -> None:
    from safetensors.torch import load_file

    def loads_tensors(path):
        load_file(str(path))  # loads every tensor, then parses the header by hand
        return header_ok(path)
    message = fails_with(check_read_safetensors_header, loads_tensors, safetensors_file,
                         match="cut off right after its header")
    assert "SafetensorError" in message and "load_file" in message


def test_header_with_safe_open_get_tensor_fails(safetensors_file) -> None:
    from safetensors import safe_open

    def via_safe_open(path):
        header = header_ok(path)
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                assert list(f.get_tensor(name).shape) == header[name]["shape"]
        return header
    message = fails_with(check_read_safetensors_header, via_safe_open, safetensors_file,
                         match="no tensor data at all")
    assert "get_tensor" in message


def test_header_returning_the_tensors_fails(safetensors_file) -> None:
    from safetensors.torch import load_file
    fails_with(check_read_safetensors_header, lambda p: load_file(str(p)), safetensors_file,
               match="holds tensors")


def test_header_check_restores_open(safetensors_file) -> None:
    import builtins
    import io
    before = (builtins.open, io.open)
    check_read_safetensors_header(header_ok, safetensors_file)
    with pytest.raises(ExerciseFailed):
        check_read_safetensors_header(lambda p: Path(p).read_bytes(), safetensors_file)
    assert (builtins.open, io.open) == before

# ----------------------------------------------------------------- model_size_mb

def size_ok(model, dtype):
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize / 1e6


def test_size_accepts_right_answer(model, capsys) -> None:
    check_model_size_mb(size_ok, model)
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("wrong, hint", [
    (lambda m, dt: sum(t.numel() for t in m.state_dict().values()) * dt.itemsize / 1e6,
     "tied lm_head"),
    (lambda m, dt: sum(p.numel() for p in m.parameters()) * dt.itemsize / 2**20, "MiB"),
    (lambda m, dt: sum(p.numel() for p in m.parameters()) * dt.itemsize, "in bytes"),
    (lambda m, dt: sum(p.numel() * p.element_size() for p in m.parameters()) / 1e6,
     "model's own element size"),
    (lambda m, dt: sum(p.numel() for p in m.parameters()) / 1e6, "parameters in millions"),
    (lambda m, dt: float("nan"), "nan"),
])
def test_size_known_mistakes(model, wrong, hint) -> None:
    fails_with(check_model_size_mb, wrong, model, match=hint)


# ----------------------------------------------------------------- generic helpers

def test_check_tensor_messages() -> None:
    expected = torch.arange(12.0).reshape(3, 4)
    fails_with(check_tensor, None, expected, "w", match="None")
    fails_with(check_tensor, expected.numpy(), expected, "w", match="torch.from_numpy")
    fails_with(check_tensor, expected.T, expected, "w", match="transpose")
    fails_with(check_tensor, expected * 2, expected, "w", match="multiplied by 2")
    fails_with(check_tensor, torch.full((3, 4), float("nan")), expected, "w", match="NaN")
    fails_with(check_tensor, torch.zeros(5), expected, "w", match="expected (3, 4)")
    partly = expected.clone()
    partly[0] += 100
    fails_with(check_tensor, partly, expected, "w", match="67% of its values match")
    fails_with(check_tensor, expected.long(), expected, "w", match="dtype")


def test_check_number_factor_and_mib() -> None:
    fails_with(check_number, 50.0, 100.0, "x", match="factor of 1/2")
    fails_with(check_number, 100 * 1e6 / 2**20, 100.0, "x", match="MiB")
    fails_with(check_number, np.float64(101.0), 100.0, "x", match="off by 1")
    fails_with(check_number, True, 1.0, "x", match="bool")
    check_number(torch.tensor(100.0), 100.0, "x")


# ----------------------------------------------------------------- count_llama_parameters (moved from chapter 01)

def llama_ok(c):
    d, v, inner = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    hd = c.get("head_dim") or d // c["num_attention_heads"]
    attention = 2 * d * c["num_attention_heads"] * hd + 2 * d * c["num_key_value_heads"] * hd
    block = attention + 3 * d * inner + 2 * d
    head = 0 if c["tie_word_embeddings"] else v * d
    return v * d + head + c["num_hidden_layers"] * block + d


def test_reference_count_matches_the_data_file() -> None:
    rows = {row["model"]: row for row in csv.DictReader((DATA_DIR / "model_configs.csv").open())}
    for model in ("Llama 3 8B", "Mistral 7B"):
        assert reference_llama_count(llama_config(rows[model])) == int(rows[model]["total_parameters"])


def test_llama_accepts_right_answer(capsys) -> None:
    check_count_llama_parameters(llama_ok)
    out = capsys.readouterr().out
    assert out.startswith("✓") and out.count("\n") == 1, out
    assert "8,030,261,248" in out and "7,241,732,096" in out


def without(c, **changes):
    return {**c, **changes}


@pytest.mark.parametrize("wrong, hint", [
    (lambda c: llama_ok(without(c, tie_word_embeddings=True)), "does not tie"),
    (lambda c: llama_ok(without(c, num_key_value_heads=c["num_attention_heads"])), "grouped-query"),
    (lambda c: llama_ok(c) - c["num_hidden_layers"] * c["hidden_size"] * c["intermediate_size"], "three matrices"),
    (lambda c: llama_ok(c) - (2 * c["num_hidden_layers"] + 1) * c["hidden_size"], "rmsnorms"),
    (lambda c: llama_ok(c) - c["hidden_size"], "final norm"),
    (lambda c: llama_ok(c) + (2 * c["num_hidden_layers"] + 1) * c["hidden_size"], "no bias"),
    (lambda c: llama_ok(c) * 2, "factor of 2"),
    (lambda c: llama_ok(c) / 1e9, "whole number"),
    (lambda c: f"{llama_ok(c) / 1e9:.1f}B", "should be a number"),
    (lambda c: c["num_layers"], "config's keys"),
])
def test_llama_known_mistakes(wrong, hint) -> None:
    fails_with(check_count_llama_parameters, wrong, match=hint)


def test_llama_tied_config_counted_twice() -> None:
    def head_always(c):
        return llama_ok(without(c, tie_word_embeddings=False))
    fails_with(check_count_llama_parameters, head_always, match="count that matrix once")


# ----------------------------------------------------------------- issue 16: cases that separate, sizes written in, side effects

def test_count_parameters_always_tied_fails_on_the_untied_config(model) -> None:
    def always_tied(config):
        return count_ok(GPT2Config.from_dict({**config.to_dict(), "tie_word_embeddings": True}))

    fails_with(check_count_parameters, always_tied, model,
               match="tie_word_embeddings=False, so lm_head is a separate")


def test_count_parameters_with_gpt2_smalls_layer_count_written_in_fails(model) -> None:
    def twelve_layers(config):
        return count_ok(GPT2Config.from_dict({**config.to_dict(), "n_layer": 12}))

    fails_with(check_count_parameters, twelve_layers, model, match="the loaded model's config")


def test_conv1d_to_linear_sharing_the_weight_is_named(model) -> None:
    def shares(conv):
        linear = nn.Linear(*conv.weight.shape)
        linear.weight = nn.Parameter(conv.weight.T)
        linear.bias = conv.bias
        return linear

    fails_with(check_conv1d_to_linear, shares, model, match="shares its memory")


def test_conv1d_to_linear_in_place_transpose_is_undone(model) -> None:
    weight = model.transformer.h[0].mlp.c_fc.weight
    before = weight.detach().clone()

    def negates_in_place(conv):
        with torch.no_grad():
            conv.weight.neg_()
            linear = to_linear_ok(conv)
            linear.weight.neg_()
        return linear

    fails_with(check_conv1d_to_linear, negates_in_place, model, match="put the original values back")
    assert torch.equal(weight.detach(), before)


def test_split_qkv_with_the_head_size_written_in_fails_on_a_second_model(model) -> None:
    d_head = model.config.n_embd // model.config.n_head  # the loaded model's, written in

    def fixed_head_size(c_attn, x, n_head):
        seq, d = x.shape
        q, k, v = (x @ c_attn.weight + c_attn.bias).split(d, dim=-1)
        return tuple(t.reshape(seq, -1, d_head).transpose(0, 1) for t in (q, k, v))

    fails_with(check_split_qkv, fixed_head_size, model, match="a second model's block 0 (6 heads of 12)")


def test_split_qkv_ignoring_n_head_fails(model) -> None:
    n = model.config.n_head
    fails_with(check_split_qkv, lambda c_attn, x, n_head: split_ok(c_attn, x, n), model,
               match="second model")


def test_split_qkv_changing_c_attn_is_undone(model) -> None:
    weight = model.transformer.h[0].attn.c_attn.weight
    before = weight.detach().clone()

    def scales_in_place(c_attn, x, n_head):
        with torch.no_grad():
            c_attn.weight.mul_(2.0)
        return split_ok(c_attn, x, n_head)

    fails_with(check_split_qkv, scales_in_place, model, match="changed its c_attn.weight in place")
    assert torch.equal(weight.detach(), before)


def test_size_with_the_parameter_count_written_in_fails_on_a_second_model(model) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    fails_with(check_model_size_mb, lambda m, dtype: n_params * dtype.itemsize / 1e6, model,
               match="model_size_mb(a second model")


def test_size_converting_the_model_is_named(model) -> None:
    def converts(m, dtype):
        m.to(torch.float16)
        return sum(p.numel() for p in m.parameters()) * dtype.itemsize / 1e6

    try:
        fails_with(check_model_size_mb, converts, model, match="changed")
    finally:
        model.float()


def test_size_leaving_training_mode_is_named(model) -> None:
    def trains(m, dtype):
        m.train()
        return size_ok(m, dtype)

    fails_with(check_model_size_mb, trains, model, match="left the model in training mode")


def test_llama_head_dim_from_hidden_over_heads_is_named() -> None:
    def derived_head_dim(c):
        return llama_ok(without(c, head_dim=c["hidden_size"] // c["num_attention_heads"]))

    fails_with(check_count_llama_parameters, derived_head_dim, match="The config gives head_dim")


def test_llama_always_tied_fails() -> None:
    fails_with(check_count_llama_parameters, lambda c: llama_ok(without(c, tie_word_embeddings=True)),
               match="does not tie")


# ----------------------------------------------------------------- every named mistake is rejected with its hint

from glassbox.exercise_checks import anatomy  # noqa: E402


@pytest.mark.parametrize("index", range(len(anatomy._count_settings(GPT2Config()))))
def test_count_parameters_rejects_each_named_mistake(model, index) -> None:
    hint = anatomy._count_settings(GPT2Config())[index][1]

    def wrong(config):
        return anatomy._formula(config, **anatomy._count_settings(config)[index][0])

    fails_with(check_count_parameters, wrong, model, match=hint[:45])


@pytest.mark.parametrize("index", range(len(anatomy._llama_settings(anatomy._llama_cases()[0][1]))))
def test_count_llama_parameters_rejects_each_named_mistake(index) -> None:
    hint = anatomy._llama_settings(anatomy._llama_cases()[0][1])[index][1]

    def wrong(config):
        return anatomy._llama_formula(config, **anatomy._llama_settings(config)[index][0])

    fails_with(check_count_llama_parameters, wrong, match=hint[:45])


def test_right_answers_pass_with_another_loaded_model(other_gpt2, capsys) -> None:
    """The checks read every size from the loaded model: a 3-layer, 6-head GPT-2 works too."""
    model, _ = other_gpt2
    for check, answer in [(check_count_parameters, count_ok), (check_conv1d_to_linear, to_linear_ok),
                          (check_split_qkv, split_ok), (check_model_size_mb, size_ok)]:
        passes(check, answer, model, capsys=capsys)


def test_count_parameters_building_the_model_is_named(model) -> None:
    """Building GPT2LMHeadModel(config) on the meta device and counting reads the answer."""
    def builds(config):
        with torch.device("meta"):
            return sum(p.numel() for p in GPT2LMHeadModel(config).parameters())

    fails_with(check_count_parameters, builds, model, match="building the model")


def test_count_llama_parameters_building_the_model_is_named() -> None:
    def builds(c):
        from transformers import LlamaConfig, LlamaForCausalLM
        with torch.device("meta"):
            return sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**c)).parameters())

    fails_with(check_count_llama_parameters, builds, match="building a Llama model ran inside")


def test_reference_header_agrees_with_the_safetensors_library(safetensors_file) -> None:
    from safetensors import safe_open

    from glassbox.exercise_checks import anatomy
    header = anatomy._reference_header(safetensors_file)
    with safe_open(str(safetensors_file), framework="pt") as f:
        assert set(f.keys()) == {k for k in header if k != "__metadata__"}
        for name in f.keys():
            piece = f.get_slice(name)
            assert list(piece.get_shape()) == header[name]["shape"]
            assert piece.get_dtype() == header[name]["dtype"]
