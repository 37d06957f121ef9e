"""`make gguf`: the course's model exported to GGUF with llama.cpp's own converter.

The converter (convert_hf_to_gguf.py) comes from llama-cpp-python's source package, which
`make gguf` / `scripts/test_servers.sh source` downloads into build/servers-src/ (or from
$GLASSBOX_GGUF_CONVERTER). Without it the test is skipped, saying so; `make test-servers`
runs it for real. The file is read back with ``gguf.GGUFReader`` and every tensor is
compared with the model's own weights, under the GGUF names the ``gguf`` package maps them to.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("export_gguf", ROOT / "scripts" / "export_gguf.py")
export_gguf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_gguf)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    try:
        converter = export_gguf.find_converter()
    except export_gguf.ExportError as error:
        pytest.skip(f"llama.cpp's converter is not available here: {error}")
    workdir = tmp_path_factory.mktemp("gguf")
    return export_gguf.export("tinygpt", converter=str(converter), workdir=workdir), workdir


def test_export_writes_n_ctx_for_the_converter(exported) -> None:
    import json

    _, workdir = exported
    config = json.loads((workdir / "hf" / "tinygpt" / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"]


def test_gguf_holds_every_weight_of_the_model_under_llamacpp_names(exported) -> None:
    import gguf

    from glassbox.loader import load_model

    path, _ = exported
    model, tokenizer = load_model("tinygpt", verbose=False)
    config = model.config
    reader = gguf.GGUFReader(str(path))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, config.n_layer)
    state = {name: value for name, value in model.state_dict().items()
             if name != "lm_head.weight" and not name.endswith((".attn.bias", ".attn.masked_bias"))}  # tied head; masks
    assert len(reader.tensors) == len(state)
    for hf_name, value in state.items():
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(stem)
        assert gguf_name is not None, hf_name
        tensor = tensors[f"{gguf_name}.{suffix}"]
        data = np.asarray(tensor.data).reshape(tuple(reversed([int(d) for d in tensor.shape])))
        expected = value.float().numpy()
        if expected.ndim == 2 and ".h." in hf_name:  # Conv1D weights are (in, out); llama.cpp keeps (out, in)
            expected = expected.T
        assert data.shape == expected.shape, hf_name
        np.testing.assert_array_equal(data, expected, err_msg=hf_name)
    fields = reader.fields

    def value(key):
        return fields[key].contents()

    assert value("general.architecture") == "gpt2"
    assert value("gpt2.context_length") == config.n_positions
    assert value("gpt2.block_count") == config.n_layer and value("gpt2.embedding_length") == config.n_embd
    assert len(value("tokenizer.ggml.tokens")) == config.vocab_size
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id


def test_missing_converter_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(export_gguf.ExportError, match="converter is not at"):
        export_gguf.find_converter(str(tmp_path / "nope.py"))
