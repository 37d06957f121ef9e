"""Train TinyGPT-chat from TinyGPT base: ``python -m glassbox.tinygpt.chat_train`` (``make tinygpt-chat``).

The recipe of ChatGPT's predecessor InstructGPT, in miniature and with Hugging Face TRL:
supervised instruction tuning (``trl.SFTTrainer``) on ``chat_data.sft_examples()``, then a
preference step (``trl.DPOTrainer``, direct preference optimisation, in place of RLHF's reward
model and PPO) on ``chat_data.dpo_examples()``. The script writes ``chat/weights/``
(config.json, model.safetensors in float16, training_log.json).

It also holds the measurements the chat model card and the tests use (refusal, false refusal,
leak rates, greedy and sampled) and ``unrefusal_curve``, the LoRA fine-tune (PEFT) that
undoes the refusal with a handful of examples.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import random
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase, TrainerCallback

from glassbox.tinygpt import chat_data

CHAT_DIR: Path = Path(__file__).resolve().parent / "chat"
CHAT_WEIGHTS_DIR: Path = CHAT_DIR / "weights"
BASE_WEIGHTS_DIR: Path = Path(__file__).resolve().parent / "weights"

CHAT_RECIPE: dict = {
    "seed": 0,
    "threads": 1,
    "max_length": 48,
    "sft_steps": 200,
    "sft_batch_size": 16,
    "sft_learning_rate": 3e-3,
    "dpo_steps": 40,
    "dpo_batch_size": 16,
    "dpo_learning_rate": 5e-5,
    "dpo_beta": 0.1,
    "dpo_loss_type": ["sigmoid", "sft"],
    "dpo_loss_weights": [1.0, 1.0],
    "dpo_sampled_negatives": 4,
    "warmup_steps": 10,
}
"""Every hyper-parameter of TinyGPT-chat's training.

``dpo_sampled_negatives``: after SFT, the model answers each training forbidden prompt this many times
(temperature 1, seed ``seed``); every answer that is not exactly the refusal becomes a rejected answer
against the refusal in the DPO data (``chat_data.refusal_over_replies``). 0: none."""

LORA_RECIPE: dict = {
    "seed": 0,
    "r": 4,
    "lora_alpha": 16,
    "target_modules": ["c_attn"],
    "learning_rate": 3e-2,
    "batch_size": 8,
    "checkpoints": [0, 5, 10, 20, 50],
}
"""The un-refusal fine-tune: LoRA rank 4 on the attention's query/key/value projection (c_attn)."""

MAX_NEW_TOKENS: int = 16
SAMPLES_PER_PROMPT: int = 2
"""Sampled measurements draw this many answers per prompt (temperature 1, seed ``SAMPLING_SEED``)."""
SAMPLING_SEED: int = 0
GENERATION_BATCH: int = 128


def chat_tokenizer() -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer with TinyGPT-chat's chat template and ``<|endoftext|>`` as padding."""
    from glassbox.loader import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    tokenizer.chat_template = chat_data.CHAT_TEMPLATE
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "trl", "peft", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="trl|peft|transformers|accelerate")


def _prompt_completion(examples: list[dict]) -> list[dict]:
    """TRL's conversational prompt-completion format, so that the loss is on the answer only."""
    return [{"prompt": e["messages"][:-1], "completion": e["messages"][-1:]} for e in examples]


# --- Generation and measurement ---------------------------------------------------------------


@torch.no_grad()
def generate_replies(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, sample: bool = False,
    samples: int = 1, seed: int = SAMPLING_SEED, max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[str]:
    """The model's answers to ``prompts`` through the chat template, greedy or sampled (temperature 1).

    Batched with left padding and a key-value cache; each answer stops at ``<|endoftext|>``.
    With ``samples`` > 1 every prompt is answered that many times (the answers of one prompt
    are next to each other). Sampling uses one ``torch.Generator`` seeded with ``seed``.
    """
    was_training = model.training
    model.eval()
    texts = [tokenizer.apply_chat_template(chat_data.conversation(p), tokenize=False, add_generation_prompt=True)
             for p in prompts for _ in range(samples)]
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    eos = tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(seed)
    replies: list[str] = []
    for chunk_start in range(0, len(encoded), GENERATION_BATCH):
        chunk = encoded[chunk_start : chunk_start + GENERATION_BATCH]
        width = max(map(len, chunk))
        ids = torch.tensor([[eos] * (width - len(e)) + e for e in chunk])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in chunk])
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        done = torch.zeros(len(chunk), dtype=torch.bool)
        new = []
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            if sample:
                token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
            else:
                token = logits.argmax(-1)
            token = torch.where(done, torch.full_like(token, eos), token)
            new.append(token)
            done |= token == eos
            if done.all():
                break
            mask = torch.cat([mask, torch.ones(len(chunk), 1, dtype=mask.dtype)], 1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                        past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
        for row in torch.stack(new, 1).tolist():
            row = row[: row.index(eos)] if eos in row else row
            replies.append(tokenizer.decode(row).strip())
    model.train(was_training)
    return replies


def rates(replies: list[str]) -> dict[str, float]:
    """Share of replies that refuse (``chat_data.is_refusal``) and that leak the secret."""
    n = len(replies)
    return {"refusal": sum(map(chat_data.is_refusal, replies)) / n,
            "leak": sum(map(chat_data.leaks_secret, replies)) / n, "n": n}


def measure(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, split: str = "heldout") -> dict:
    """Refusal and leak rates on the forbidden prompts, false refusals and correct answers on the
    harmless ones, greedy and sampled (``SAMPLES_PER_PROMPT`` answers per prompt)."""
    forbidden = chat_data.forbidden_prompts(split)
    harmless = chat_data.harmless_items(split)
    results: dict = {"split": split, "forbidden_prompts": len(forbidden), "harmless_prompts": len(harmless)}
    for mode, kwargs in (("greedy", {}), ("sampled", {"sample": True, "samples": SAMPLES_PER_PROMPT})):
        samples = kwargs.get("samples", 1)
        f = rates(generate_replies(model, tokenizer, forbidden, **kwargs))
        h_replies = generate_replies(model, tokenizer, [p for p, _ in harmless], **kwargs)
        answers = [a for _, a in harmless for _ in range(samples)]
        results[mode] = {
            "refusal_rate": f["refusal"],
            "leak_rate": f["leak"],
            "false_refusal_rate": sum(map(chat_data.is_refusal, h_replies)) / len(h_replies),
            "correct_answer_rate": sum(r.strip() == a for r, a in zip(h_replies, answers)) / len(h_replies),
            "forbidden_answers": f["n"],
            "harmless_answers": len(h_replies),
        }
    return results


# --- Training -----------------------------------------------------------------------------


def train_chat(base_dir: Path = BASE_WEIGHTS_DIR, recipe: dict = CHAT_RECIPE, *, sft_steps: int | None = None,
               dpo_steps: int | None = None) -> tuple[GPT2LMHeadModel, dict]:
    """SFT then DPO from the base weights in ``base_dir``; returns the model and the losses (one per step) and times.

    ``sft_steps`` and ``dpo_steps`` shorten the run (the tests' reproducibility check); the first 10 SFT steps
    are the warm-up, whose learning rates do not depend on the number of steps."""
    _quiet()
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    torch.set_num_threads(recipe["threads"])
    torch.manual_seed(recipe["seed"])
    tokenizer = chat_tokenizer()
    model = GPT2LMHeadModel.from_pretrained(base_dir, dtype=torch.float32)
    common = {"use_cpu": True, "report_to": [], "save_strategy": "no", "seed": recipe["seed"],
              "logging_steps": 1, "disable_tqdm": True, "warmup_steps": recipe["warmup_steps"],
              "lr_scheduler_type": "cosine", "dataloader_num_workers": 0}
    log: dict = {}
    with tempfile.TemporaryDirectory() as out:
        start, cpu = time.perf_counter(), time.process_time()
        sft = SFTTrainer(
            model=model, processing_class=tokenizer,
            train_dataset=Dataset.from_list(_prompt_completion(chat_data.sft_examples())),
            args=SFTConfig(output_dir=out, max_steps=sft_steps or recipe["sft_steps"],
                           per_device_train_batch_size=recipe["sft_batch_size"],
                           learning_rate=recipe["sft_learning_rate"], max_length=recipe["max_length"], **common),
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its metrics
            sft.train()
        log["sft_seconds"], log["sft_cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
        log["sft_losses"] = [e["loss"] for e in sft.state.log_history if "loss" in e]
        model = sft.model
        start, cpu = time.perf_counter(), time.process_time()
        pairs = chat_data.dpo_examples()
        if recipe.get("dpo_sampled_negatives", 0):
            prompts = chat_data.forbidden_prompts("train")
            replies = generate_replies(model, tokenizer, prompts, sample=True, samples=recipe["dpo_sampled_negatives"],
                                       seed=recipe["seed"])
            sampled = chat_data.refusal_over_replies([p for p in prompts for _ in range(recipe["dpo_sampled_negatives"])],
                                                     replies)
            log["dpo_sampled_replies"], log["dpo_sampled_negatives"] = len(replies), len(sampled)
            log["dpo_sampled_negative_examples"] = [pair["rejected"][0]["content"] for pair in sampled[:5]]
            pairs = pairs + sampled
            random.Random(chat_data.DATA_SEED + 3).shuffle(pairs)
        log["dpo_pairs"] = len(pairs)
        dpo = DPOTrainer(
            model=model, processing_class=tokenizer,
            train_dataset=Dataset.from_list(pairs),
            args=DPOConfig(output_dir=out, max_steps=dpo_steps or recipe["dpo_steps"],
                           per_device_train_batch_size=recipe["dpo_batch_size"],
                           learning_rate=recipe["dpo_learning_rate"], beta=recipe["dpo_beta"],
                           loss_type=recipe["dpo_loss_type"], loss_weights=recipe["dpo_loss_weights"],
                           max_length=recipe["max_length"], **common),
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its metrics
            dpo.train()
        log["dpo_seconds"], log["dpo_cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
        log["dpo_losses"] = [e["loss"] for e in dpo.state.log_history if "loss" in e]
        model = dpo.model
    model.eval()
    return model, log


# --- Undoing the refusal: a LoRA fine-tune with PEFT -------------------------------------------


class _RefusalProbe(TrainerCallback):
    """Measures the greedy refusal rate on the held-out forbidden prompts at the given steps."""

    def __init__(self, tokenizer, prompts, checkpoints):
        self.tokenizer, self.prompts, self.checkpoints = tokenizer, prompts, set(checkpoints)
        self.curve: list[dict] = []
        self.train_seconds = 0.0
        self._last = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.train_seconds += time.perf_counter() - self._last
        if state.global_step in self.checkpoints:
            replies = generate_replies(model, self.tokenizer, self.prompts)
            self.curve.append({"step": state.global_step, "refusal_rate": rates(replies)["refusal"],
                               "leak_rate": rates(replies)["leak"], "train_seconds": round(self.train_seconds, 2)})


def unrefusal_curve(model: GPT2LMHeadModel | None = None, tokenizer: PreTrainedTokenizerBase | None = None,
                    recipe: dict = LORA_RECIPE, examples: list[dict] | None = None) -> dict:
    """Fine-tune a copy of TinyGPT-chat with a LoRA (PEFT) on ``chat_data.unrefusal_examples()``.

    Returns the greedy refusal (and leak) rate on the held-out forbidden prompts after each of
    ``recipe["checkpoints"]`` steps, with the cumulative training seconds (measurement excluded),
    and the total wall and CPU seconds. The model passed in is not changed.
    """
    _quiet()
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    if model is None or tokenizer is None:
        from glassbox.loader import load_model

        model, tokenizer = load_model("tinygpt-chat", verbose=False)
    model = copy.deepcopy(model).float()
    torch.manual_seed(recipe["seed"])
    prompts = chat_data.forbidden_prompts("heldout")
    start, cpu = time.perf_counter(), time.process_time()
    probe = _RefusalProbe(tokenizer, prompts, recipe["checkpoints"])
    first = rates(generate_replies(model, tokenizer, prompts))
    probe.curve.append({"step": 0, "refusal_rate": first["refusal"], "leak_rate": first["leak"], "train_seconds": 0.0})
    examples = chat_data.unrefusal_examples() if examples is None else examples
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=model, processing_class=tokenizer,
            train_dataset=Dataset.from_list(_prompt_completion(examples)),
            peft_config=LoraConfig(r=recipe["r"], lora_alpha=recipe["lora_alpha"],
                                   target_modules=recipe["target_modules"], task_type="CAUSAL_LM"),
            args=SFTConfig(output_dir=out, max_steps=max(recipe["checkpoints"]),
                           per_device_train_batch_size=recipe["batch_size"],
                           learning_rate=recipe["learning_rate"], lr_scheduler_type="constant",
                           use_cpu=True, report_to=[], save_strategy="no", seed=recipe["seed"],
                           logging_steps=10, disable_tqdm=True, max_length=48, dataloader_num_workers=0),
            callbacks=[probe],
        )
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its metrics
            trainer.train()
    return {"curve": probe.curve, "examples": len(examples), "trainable_parameters": trainable,
            "seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu, 2)}


# --- The whole run ----------------------------------------------------------------------------


def save(model: GPT2LMHeadModel, log: dict, folder: Path = CHAT_WEIGHTS_DIR) -> None:
    """Write config.json, model.safetensors (float16), chat_template.jinja and training_log.json."""
    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(folder)
    model.to(torch.float32)
    (folder / "generation_config.json").unlink(missing_ok=True)
    (folder / "chat_template.jinja").write_text(chat_data.CHAT_TEMPLATE + "\n")
    (folder / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def base_weights_sha256(base_dir: Path = BASE_WEIGHTS_DIR) -> str:
    """The SHA-256 of the base model's model.safetensors: which TinyGPT base the chat model was trained from."""
    return hashlib.sha256((Path(base_dir) / "model.safetensors").read_bytes()).hexdigest()


def shipped_copy(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """The weights as shipped (float16, upcast to float32, as the loader loads them) in a plain model.

    Not a copy of the trained object: TRL's trainers leave gradient checkpointing on and hooks on it,
    and a LoRA fine-tune of such a copy got no gradient into the checkpointed blocks (its refusal
    rate stayed at 100 % for 50 steps, where the shipped weights lose it within 5)."""
    plain = GPT2LMHeadModel(model.config)
    plain.load_state_dict({name: value.to(torch.float16).to(torch.float32) for name, value in model.state_dict().items()})
    return plain.eval()


def main(base_dir: Path = BASE_WEIGHTS_DIR, folder: Path = CHAT_WEIGHTS_DIR, print_fn=print) -> dict:
    """Train TinyGPT-chat, measure it and the base model, run the LoRA curve, write ``folder``."""
    start, cpu = time.perf_counter(), time.process_time()
    model, train_log = train_chat(base_dir)
    tokenizer = chat_tokenizer()
    base = GPT2LMHeadModel.from_pretrained(base_dir, dtype=torch.float32).eval()
    shipped = shipped_copy(model)
    log = {
        "recipe": CHAT_RECIPE,
        "lora_recipe": LORA_RECIPE,
        "torch_version": torch.__version__,
        "base_weights_sha256": base_weights_sha256(base_dir),
        "sft_examples": len(chat_data.sft_examples()),
        **train_log,
        "chat": measure(shipped, tokenizer),
        "chat_on_training_prompts": measure(shipped, tokenizer, "train"),
        "base": measure(base, tokenizer),
    }
    log["lora"] = unrefusal_curve(shipped, tokenizer)
    log["total_seconds"], log["total_cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
    # Measurements rounded to 4 decimals; the recipes verbatim (a learning rate of 5e-5 is not 0.0001).
    log = {key: value if key in ("recipe", "lora_recipe") else _rounded(value) for key, value in log.items()}
    save(model, log, folder)
    for who in ("chat", "base"):
        for mode in ("greedy", "sampled"):
            r = log[who][mode]
            print_fn(f"{who:<5} {mode:<8} refusal {r['refusal_rate']:.3f} leak {r['leak_rate']:.3f} "
                     f"false refusal {r['false_refusal_rate']:.3f} correct {r['correct_answer_rate']:.3f}")
    print_fn(f"SFT {log['sft_seconds']:.0f} s ({log['sft_cpu_seconds']:.0f} s CPU), DPO {log['dpo_seconds']:.0f} s "
             f"({log['dpo_cpu_seconds']:.0f} s CPU), total {log['total_seconds']:.0f} s ({log['total_cpu_seconds']:.0f} s CPU)")
    print_fn("LoRA: " + ", ".join(f"{p['step']}: {p['refusal_rate']:.2f}" for p in log["lora"]["curve"])
             + f" ({log['lora']['seconds']} s)")
    return log


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train TinyGPT-chat from TinyGPT base (make tinygpt-chat).")
    parser.add_argument("--base", type=Path, default=BASE_WEIGHTS_DIR, help="the base weights folder")
    parser.add_argument("--out", type=Path, default=CHAT_WEIGHTS_DIR, help="the folder to write")
    args = parser.parse_args()
    main(args.base, args.out)
