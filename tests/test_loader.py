"""The model loader: choice order, offline fallback, and clear errors for bad input."""

import shutil
import socket
import threading

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from glassbox import loader
from glassbox.loader import ModelLoadError, choose_model, gpt2_tokenizer, hub_reachable, load_model


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A small GPT-2 saved as safetensors, standing in for any model folder."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=50257))
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def silent_hub(monkeypatch):
    """A 'Hub' on 127.0.0.1 that accepts connections and never answers, like a hung server."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []
    stop = threading.Event()

    def accept_and_hold():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    monkeypatch.setattr(loader.hub_constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_gpt2_tokenizer_is_the_real_one_offline():
    tokenizer = gpt2_tokenizer()
    assert len(tokenizer) == 50257
    assert tokenizer("Hello world!").input_ids == [15496, 995, 0]  # a published fact about GPT-2's BPE
    assert tokenizer(" SolidGoldMagikarp").input_ids == [43453]
    assert tokenizer.eos_token_id == 50256


def test_untrained_gpt2_has_gpt2_small_shape_and_fixed_seed():
    model_a, _ = load_model("gpt2-untrained", verbose=False)
    model_b, _ = load_model("gpt2-untrained", verbose=False)
    assert sum(p.numel() for p in model_a.parameters()) == 124_439_808  # GPT-2 small, published
    assert torch.equal(model_a.transformer.h[0].attn.c_attn.weight, model_b.transformer.h[0].attn.c_attn.weight)
    assert not model_a.training


def test_explicit_name_wins_over_environment(monkeypatch):
    monkeypatch.setenv("GLASSBOX_MODEL", "tinygpt")
    assert choose_model("gpt2-untrained") == ("gpt2-untrained", "you asked for it by name")


def test_environment_variable_is_second(monkeypatch):
    monkeypatch.setenv("GLASSBOX_MODEL", "gpt2-untrained")
    name, reason = choose_model()
    assert name == "gpt2-untrained" and "GLASSBOX_MODEL" in reason


def test_offline_choice_is_tinygpt_and_says_why(monkeypatch):
    monkeypatch.delenv("GLASSBOX_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loader, "gpt2_in_local_cache", lambda name="gpt2": False)
    name, reason = choose_model()
    assert name == "tinygpt" and "HF_HUB_OFFLINE" in reason


def test_cached_gpt2_is_preferred(monkeypatch):
    monkeypatch.delenv("GLASSBOX_MODEL", raising=False)
    monkeypatch.setattr(loader, "gpt2_in_local_cache", lambda name="gpt2": True)
    assert choose_model() == ("gpt2", "GPT-2 is in the local Hugging Face cache")


def test_a_hub_that_never_answers_is_given_up_on(silent_hub):
    reachable, why = hub_reachable()
    assert not reachable
    assert f"did not answer within {loader.HUB_TIMEOUT_SECONDS:g} s" in why


def test_hung_hub_falls_back_to_tinygpt_and_says_so(silent_hub, monkeypatch, capsys):
    monkeypatch.delenv("GLASSBOX_MODEL", raising=False)
    monkeypatch.setattr(loader, "gpt2_in_local_cache", lambda name="gpt2": False)
    model, tokenizer = load_model()
    line = capsys.readouterr().out.strip()
    assert line.startswith("Loaded tinygpt") and "did not answer" in line
    assert line.count("\n") == 0
    assert model.config.model_type == "gpt2"


def test_explicit_gpt2_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loader, "gpt2_in_local_cache", lambda name="gpt2": False)
    with pytest.raises(ModelLoadError, match="tinygpt"):
        load_model("gpt2")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ModelLoadError) as error:
        load_model("no-such-model")
    for name in loader.MODEL_NAMES:
        assert name in str(error.value)


def test_environment_naming_a_missing_folder_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GLASSBOX_MODEL", str(tmp_path / "not-there"))
    with pytest.raises(ModelLoadError, match=r"GLASSBOX_MODEL=.*not-there.* does not exist"):
        load_model()


def test_a_model_folder_loads_with_gpt2_tokenizer(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), verbose=False)
    assert model.config.n_embd == 8 and len(tokenizer) == 50257
    assert model.lm_head.weight is model.transformer.wte.weight


def test_folder_without_weights_names_the_missing_file(tiny_model_dir):
    (tiny_model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_model(str(tiny_model_dir))


def test_pickled_weights_are_never_loaded(tiny_model_dir):
    (tiny_model_dir / "model.safetensors").unlink()
    torch.save({}, tiny_model_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_model(str(tiny_model_dir))


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_corrupt_safetensors_gives_an_error_naming_the_file(tiny_model_dir, damage):
    weights = tiny_model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x10\x00\x00\x00\x00\x00\x00\x00not json" + data[16:])
    with pytest.raises(ModelLoadError) as error:
        load_model(str(tiny_model_dir))
    message = str(error.value)
    assert "model.safetensors" in message and "not a valid safetensors file" in message
    assert weights.read_bytes() != data  # nothing "repaired" behind the learner's back; the file is as they left it


def test_bundled_tinygpt_loads_offline():
    model, tokenizer = load_model("tinygpt", verbose=False)
    ids = tokenizer("The", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert tokenizer.model_max_length == model.config.n_positions


def test_bundled_tinygpt_chat_loads_offline_with_its_chat_template():
    model, tokenizer = load_model("tinygpt-chat", verbose=False)
    base, _ = load_model("tinygpt", verbose=False)
    assert model.config.n_embd == base.config.n_embd and model.config.vocab_size == len(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi?"}], tokenize=False, add_generation_prompt=True)
    assert text == "Q: Hi?\nA:"
    assert tokenizer.pad_token == tokenizer.eos_token
    assert "tinygpt-chat" in loader.MODEL_NAMES


def test_missing_chat_weights_give_advice_to_retrain(monkeypatch, tmp_path):
    monkeypatch.setattr(loader, "TINYGPT_CHAT_WEIGHTS_DIR", tmp_path / "chat" / "weights")
    with pytest.raises(ModelLoadError, match="make tinygpt-chat"):
        load_model("tinygpt-chat")


def test_chat_weights_without_template_are_a_clear_error(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(loader, "TINYGPT_CHAT_WEIGHTS_DIR", tiny_model_dir)
    with pytest.raises(ModelLoadError, match="no chat_template.jinja"):
        load_model("tinygpt-chat")


def test_a_model_folder_with_a_chat_template_gets_it(tiny_model_dir):
    (tiny_model_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!\n")
    _, tokenizer = load_model(str(tiny_model_dir), verbose=False)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hey"}], tokenize=False) == "hey!"


def test_the_sockets_own_timeout_reads_as_silence_not_as_no_connection(silent_hub, monkeypatch):
    # Under load the socket's timeout can fire before the thread's join gives up; both mean the Hub
    # accepted the connection and said nothing. The join waits longer here, so the socket fires first.
    original_join = threading.Thread.join
    monkeypatch.setattr(threading.Thread, "join", lambda self, timeout=None: original_join(self, None))
    reachable, why = hub_reachable(timeout=0.5)
    assert not reachable
    assert why == "the Hub did not answer within 0.5 s", why
