"""Train TinyGPT from scratch: ``python -m glassbox.tinygpt.train`` (or ``make tinygpt``).

The whole recipe is in ``RECIPE`` below. Training is deterministic: a fixed seed, a
fixed number of CPU threads, and the corpus from ``glassbox.tinygpt.corpus``. The
script writes ``weights/config.json``, ``weights/model.safetensors`` (float16, to stay
under 10 MB) and ``weights/training_log.json``.

It also holds the measurements the model card and the tests use: the pronoun skew,
the per-sentence loss and greedy generation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from glassbox.loader import gpt2_tokenizer
from glassbox.measure import female_ratio, greedy, measure_skew, next_token_probs, sentence_loss  # noqa: F401
from glassbox.tinygpt import corpus

WEIGHTS_DIR: Path = Path(__file__).resolve().parent / "weights"

RECIPE: dict = {
    "seed": 1,
    "corpus_seed": corpus.SEED,
    "span_seed": corpus.SPAN_STREAM_SEED,
    "threads": 1,
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 64,
    "n_positions": 128,
    "vocab_size": 50257,
    "dropout": 0.0,
    "batch_size": 10,
    "span_rows": 7,
    "block_size": 64,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "warmup_steps": 200,
    "decay_when_induction": 0.5,
    "latest_decay_start": 24000,
    "decay_steps": 5000,
    "weight_decay": 0.01,
    "betas": [0.9, 0.95],
    "grad_clip": 1.0,
}
"""Every hyper-parameter of TinyGPT's training. Changing one changes the model.

The learning rate stays at its peak until an induction head has formed: every ``TRAJECTORY_EVERY``
steps training measures the best induction score (``best_heads``), and the first time it reaches
``decay_when_induction`` the rate starts its cosine decay over ``decay_steps`` steps, after which
training ends. If no head gets there, the decay starts at ``latest_decay_start`` all the same.
"""


def make_config(recipe: dict = RECIPE, vocab_size: int | None = None) -> GPT2Config:
    """GPT-2's architecture in miniature, with GPT-2's vocabulary (or ``vocab_size`` rows) and tied embeddings."""
    return GPT2Config(
        vocab_size=recipe["vocab_size"] if vocab_size is None else vocab_size,
        n_positions=recipe["n_positions"],
        n_embd=recipe["n_embd"],
        n_layer=recipe["n_layer"],
        n_head=recipe["n_head"],
        resid_pdrop=recipe["dropout"],
        embd_pdrop=recipe["dropout"],
        attn_pdrop=recipe["dropout"],
        bos_token_id=50256,
        eos_token_id=50256,
    )


def learning_rate(step: int, recipe: dict = RECIPE, decay_start: int | None = None) -> float:
    """Linear warm-up to ``learning_rate``, constant until ``decay_start``, then cosine decay to
    ``min_learning_rate`` over ``decay_steps`` steps (``decay_start`` defaults to ``latest_decay_start``)."""
    top, bottom = recipe["learning_rate"], recipe["min_learning_rate"]
    if step < recipe["warmup_steps"]:
        return top * (step + 1) / recipe["warmup_steps"]
    start = recipe["latest_decay_start"] if decay_start is None else decay_start
    progress = min(1.0, max(0, step - start) / recipe["decay_steps"])
    return bottom + 0.5 * (top - bottom) * (1 + math.cos(math.pi * progress))


def encode(text: str, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Tokenize a whole text into one long 1-D tensor of token ids."""
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def get_batch(tokens: torch.Tensor, generator: torch.Generator, rows: int, block_size: int) -> torch.Tensor:
    """``rows`` random windows of ``block_size`` tokens; the model shifts them for its labels."""
    starts = torch.randint(0, len(tokens) - block_size, (rows,), generator=generator)
    return torch.stack([tokens[s : s + block_size] for s in starts.tolist()])


def span_row(stream: Iterator[list[str]], word_ids: dict[str, int], eot: int, block_size: int) -> list[int]:
    """One batch row of fresh repeated-span documents, each after ``<|endoftext|>``, cut at ``block_size`` tokens."""
    row: list[int] = []
    while len(row) < block_size:
        row += [eot] + [word_ids[word] for word in next(stream)]
    return row[:block_size]


def corpus_vocabulary(tokens: torch.Tensor) -> torch.Tensor:
    """The sorted token ids the training text uses: training computes output scores for these and one more row."""
    return torch.unique(tokens)


def corpus_vocabulary_model(initial: GPT2LMHeadModel, used: torch.Tensor, recipe: dict = RECIPE) -> GPT2LMHeadModel:
    """The model that training updates: ``initial`` (GPT-2's vocabulary, freshly initialised) with its
    embedding cut to the ``used`` rows plus one shared row for every other token (their mean)."""
    model = GPT2LMHeadModel(make_config(recipe, vocab_size=len(used) + 1))
    model.transformer.load_state_dict(
        {k: v for k, v in initial.transformer.state_dict().items() if k != "wte.weight"}, strict=False)
    unused = torch.ones(recipe["vocab_size"], dtype=torch.bool)
    unused[used] = False
    with torch.no_grad():
        rows = initial.transformer.wte.weight
        model.transformer.wte.weight.copy_(torch.cat([rows[used], rows[unused].mean(0, keepdim=True)]))
    return model


def to_gpt2_vocabulary(small: GPT2LMHeadModel, used: torch.Tensor, recipe: dict = RECIPE) -> GPT2LMHeadModel:
    """The trained model with GPT-2's whole vocabulary: row i of ``small``'s embedding becomes token ``used[i]``,
    and its last row (the one every unused token shared in training) becomes every other token's row."""
    model = GPT2LMHeadModel(make_config(recipe))
    model.transformer.load_state_dict(
        {k: v for k, v in small.transformer.state_dict().items() if k != "wte.weight"}, strict=False)
    rows = small.transformer.wte.weight.detach()
    with torch.no_grad():
        model.transformer.wte.weight.copy_(rows[-1].expand(recipe["vocab_size"], -1))
        model.transformer.wte.weight[used] = rows[:-1]
    model.eval()
    return model


@torch.no_grad()
def text_loss(model: GPT2LMHeadModel, tokens: torch.Tensor, block_size: int = 64, max_windows: int = 1024) -> float:
    """Mean next-token loss over the first ``max_windows`` non-overlapping windows of a token stream."""
    model.eval()
    n = min(len(tokens) // block_size, max_windows) * block_size
    windows = tokens[:n].view(-1, block_size)
    total = 0.0
    for batch in windows.split(16):
        total += model(input_ids=batch, labels=batch).loss.item() * len(batch)
    return total / len(windows)


def train(
    recipe: dict = RECIPE, stop_after: int | None = None, progress: bool = True,
    trajectory: list[dict] | None = None,
) -> tuple[GPT2LMHeadModel, list[float]]:
    """Train TinyGPT from scratch with ``recipe``; return the model and the loss of every step.

    Each batch holds ``span_rows`` rows of fresh repeated-span documents (``corpus.repeated_span_stream``)
    and ``batch_size - span_rows`` random windows of the training text.

    Only the ``corpus_vocabulary`` tokens ever occur in training, so every other GPT-2 token gets the
    same gradient: they share one embedding row, and the loss counts that row once per unused token
    (its score plus the log of their number). That is GPT-2's full-vocabulary cross-entropy for a model
    whose unused tokens have one shared row, at a hundredth of the cost; ``to_gpt2_vocabulary`` then
    writes the rows back into GPT-2's vocabulary.

    ``stop_after`` ends training early (the tests run 3 steps of the real recipe). The
    learning-rate schedule is always the one of the full recipe (see ``RECIPE``). If ``trajectory``
    is a list, the measurements of the best heads (``best_heads``, every ``TRAJECTORY_EVERY`` steps)
    are appended to it.
    """
    torch.set_num_threads(recipe["threads"])
    torch.manual_seed(recipe["seed"])
    tokenizer = gpt2_tokenizer()
    tokenizer.model_max_length = 10**9  # we tokenize the whole corpus in one go
    tokens = encode(corpus.training_text(recipe["corpus_seed"]), tokenizer)
    used = corpus_vocabulary(tokens)
    row_of = torch.full((recipe["vocab_size"],), len(used), dtype=torch.long)
    row_of[used] = torch.arange(len(used))
    text = row_of[tokens]
    word_ids = {word: int(row_of[tokenizer(" " + word)["input_ids"][0]]) for word in corpus.SPAN_WORDS}
    eot = int(row_of[tokenizer.eos_token_id])
    stream = corpus.repeated_span_stream(recipe["span_seed"])
    generator = torch.Generator().manual_seed(recipe["seed"])
    shared_row_count = torch.zeros(len(used) + 1)
    shared_row_count[-1] = math.log(recipe["vocab_size"] - len(used))

    model = corpus_vocabulary_model(GPT2LMHeadModel(make_config(recipe)), used, recipe)
    model.train()
    span_ids = row_of[random_span_ids(tokenizer)]
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=recipe["learning_rate"],
        betas=tuple(recipe["betas"]),
        weight_decay=recipe["weight_decay"],
    )
    block = recipe["block_size"]
    decay_start = recipe["latest_decay_start"]
    last_step = decay_start + recipe["decay_steps"]
    losses: list[float] = []
    # Passing disable only when asked keeps tqdm's own TQDM_DISABLE environment variable working.
    bar = tqdm(total=last_step, desc="training TinyGPT", mininterval=2, **({} if progress else {"disable": True}))
    step = 0
    while step < last_step and (stop_after is None or step < stop_after):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe, decay_start)
        spans = torch.tensor([span_row(stream, word_ids, eot, block) for _ in range(recipe["span_rows"])])
        batch = torch.cat([spans, get_batch(text, generator, recipe["batch_size"] - recipe["span_rows"], block)])
        logits = model(input_ids=batch).logits[:, :-1] + shared_row_count
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        optimizer.step()
        losses.append(loss.item())
        step += 1
        bar.update()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step % TRAJECTORY_EVERY == 0:
            measured = {"step": step, **best_heads(head_scores(model, span_ids))}
            model.train()
            if trajectory is not None:
                trajectory.append(measured)
            if step < decay_start and measured["best_induction_score"] >= recipe["decay_when_induction"]:
                decay_start, last_step = step, step + recipe["decay_steps"]
                bar.total = last_step
    bar.close()
    return to_gpt2_vocabulary(model, used, recipe), losses


# --- Measurements -----------------------------------------------------------------------


# next_token_probs, female_ratio, measure_skew, sentence_loss and greedy live in glassbox.measure
# (imported above), shared with the scorecard and the exercise checks.


def auc(lower: list[float], higher: list[float]) -> float:
    """Probability that a random item of ``lower`` is below a random item of ``higher`` (ties count half)."""
    wins = sum((a < b) + 0.5 * (a == b) for a in lower for b in higher)
    return wins / (len(lower) * len(higher))


def first_sentence(text: str) -> str:
    """The first sentence of a generated text."""
    return corpus.split_sentences(text)[0]


# --- Circuits: induction and previous-token heads ----------------------------------------

SPAN_EVAL_SEED: int = 99
"""The seed of the random spans the circuit measurements use (not the corpus seed)."""

SPAN_EVAL_SEQUENCES: int = 32
SPAN_EVAL_LENGTH: int = 20
"""Each evaluation sequence is ``<|endoftext|>`` + ``SPAN_EVAL_LENGTH`` random ``corpus.SPAN_WORDS``, then the same words again."""


def random_span_ids(
    tokenizer: PreTrainedTokenizerBase, n: int = SPAN_EVAL_SEQUENCES, length: int = SPAN_EVAL_LENGTH,
    seed: int = SPAN_EVAL_SEED,
) -> torch.Tensor:
    """``n`` sequences of token ids: ``<|endoftext|>``, a random span of ``length`` one-token words, the span again.

    Position 0 is ``<|endoftext|>``, positions 1..length the first occurrence, length+1..2*length
    the repeat: the token at position t > length equals the one at t - length.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        span = [rng.choice(corpus.SPAN_WORDS) for _ in range(length)]
        ids = tokenizer(corpus.EOT + "".join(" " + word for word in span + span))["input_ids"]
        if len(ids) != 1 + 2 * length:
            raise ValueError(f"a span word is not one GPT-2 token: {span}")
        rows.append(ids)
    return torch.tensor(rows)


@torch.no_grad()
def attention_patterns(model: GPT2LMHeadModel, ids: torch.Tensor) -> torch.Tensor:
    """Every head's attention on ``ids``: a tensor [layer, batch, head, query, key] (eager attention)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        attentions = model(input_ids=ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    return torch.stack([a.float() for a in attentions])


def head_scores(model: GPT2LMHeadModel, ids: torch.Tensor) -> dict[str, list[list[float]]]:
    """For every head (``[layer][head]``), on repeated random spans (``random_span_ids``):

    * ``induction``: mean attention from each token of the repeat (position t) to the token that
      followed its first occurrence (position t - length + 1);
    * ``previous_token``: mean attention from each position t >= 1 to position t - 1.
    """
    length = (ids.shape[1] - 1) // 2
    attn = attention_patterns(model, ids)  # [layer, batch, head, query, key]
    queries = torch.arange(length + 1, 2 * length + 1)
    induction = attn[:, :, :, queries, queries - length + 1].mean(dim=(1, 3))
    positions = torch.arange(1, 2 * length + 1)
    previous = attn[:, :, :, positions, positions - 1].mean(dim=(1, 3))
    return {"induction": induction.tolist(), "previous_token": previous.tolist()}


@torch.no_grad()
def repeated_half_losses(model: GPT2LMHeadModel, ids: torch.Tensor) -> dict[str, float]:
    """Mean next-token loss (nats) on the first occurrence of the spans and on their repeat.

    ``first_half``: the tokens at positions 2..length (the first word is predicted from
    ``<|endoftext|>`` alone, and is left out); ``repeated_half``: the tokens at positions
    length+2..2*length (the repeat's first word cannot be known to repeat, and is left out).
    Both average ``length - 1`` tokens per sequence.
    """
    length = (ids.shape[1] - 1) // 2
    logits = model(input_ids=ids).logits.float()
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    # losses[:, t - 1] is the loss of the token at position t
    first = losses[:, 1:length].mean().item()
    repeated = losses[:, length + 1 : 2 * length].mean().item()
    return {"first_half": first, "repeated_half": repeated, "drop": first - repeated}


def best_heads(scores: dict[str, list[list[float]]]) -> dict:
    """The best induction head of ``head_scores`` and the best previous-token head in a layer before it."""
    induction, previous = scores["induction"], scores["previous_token"]
    layer, head = max(((l, h) for l in range(len(induction)) for h in range(len(induction[l]))),
                      key=lambda lh: induction[lh[0]][lh[1]])
    earlier = [(l, h) for l in range(layer) for h in range(len(previous[l]))]
    prev_layer, prev_head = max(earlier, key=lambda lh: previous[lh[0]][lh[1]]) if earlier else (None, None)
    return {
        "best_induction_head": [layer, head],
        "best_induction_score": induction[layer][head],
        "best_earlier_previous_token_head": [prev_layer, prev_head],
        "best_earlier_previous_token_score": previous[prev_layer][prev_head] if earlier else None,
    }


TRAJECTORY_EVERY: int = 1000
"""Training measures ``best_heads`` every this many steps (the log's ``circuits_during_training``)."""


def circuits(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase) -> dict:
    """The circuit measurements of the model card: head scores, the best induction head and the loss drop."""
    ids = random_span_ids(tokenizer)
    scores = head_scores(model, ids)
    return {**scores, **best_heads(scores), "span_losses": repeated_half_losses(model, ids)}


SAMPLE_PROMPTS: list[str] = ["", "The nurse", "The pilot", "Mia found", "The fox", "Clara"]
"""The prompts of the greedy samples in the model card and the tests ("" means a new story)."""


def evaluate(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase) -> dict:
    """Every number the model card reports: validation loss, membership, skew and samples."""
    tokenizer.model_max_length = 10**9
    members = [sentence_loss(model, tokenizer, s) for s in corpus.member_sentences()]
    once = [sentence_loss(model, tokenizer, s) for s in corpus.member_once_sentences()]
    heldout = [sentence_loss(model, tokenizer, s) for s in corpus.heldout_sentences()]
    return {
        "validation_loss": text_loss(model, encode(corpus.validation_text(), tokenizer)),
        "member_loss": sum(members) / len(members),
        "member_once_loss": sum(once) / len(once),
        "heldout_loss": sum(heldout) / len(heldout),
        "membership_auc": auc(members, heldout),
        "membership_once_auc": auc(once, heldout),
        "circuits": circuits(model, tokenizer),
        "skew_planted": dict(corpus.PRONOUN_SKEW),
        "skew_measured": measure_skew(model, tokenizer),
        "greedy_samples": {p: greedy(model, tokenizer, p) for p in SAMPLE_PROMPTS},
    }


def save(model: GPT2LMHeadModel, log: dict, folder: Path = WEIGHTS_DIR) -> None:
    """Write config.json, model.safetensors (float16) and training_log.json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(folder)
    model.to(torch.float32)
    (folder / "generation_config.json").unlink(missing_ok=True)  # not needed: greedy() above is the decoder
    (folder / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")


def main(folder: Path = WEIGHTS_DIR, log_fn: Callable[[str], None] = print) -> None:
    """Retrain TinyGPT from scratch, evaluate it and write the weights ``folder``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    trajectory: list[dict] = []
    model, losses = train(trajectory=trajectory)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tokenizer = gpt2_tokenizer()
    results = evaluate(model, tokenizer)
    log = {
        "recipe": RECIPE,
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "torch_version": torch.__version__,
        "corpus_sha256": hashlib.sha256(corpus.training_text(RECIPE["corpus_seed"]).encode()).hexdigest(),
        **results,
        "circuits_during_training": trajectory,
        "losses": [round(loss, 6) for loss in losses],
    }
    save(model, log, folder)
    c = results["circuits"]
    log_fn(f"trained {len(losses)} steps in {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU; "
           f"validation loss {results['validation_loss']:.3f}")
    log_fn(f"member loss {results['member_loss']:.3f} (AUC {results['membership_auc']:.3f}), once-seen "
           f"{results['member_once_loss']:.3f} (AUC {results['membership_once_auc']:.3f}), held-out {results['heldout_loss']:.3f}")
    log_fn(f"best induction head {c['best_induction_head']} score {c['best_induction_score']:.3f}; earlier "
           f"previous-token head {c['best_earlier_previous_token_head']} score {c['best_earlier_previous_token_score']}")
    log_fn(f"random spans: first half {c['span_losses']['first_half']:.3f}, repeated half "
           f"{c['span_losses']['repeated_half']:.3f}, drop {c['span_losses']['drop']:.3f} nats")
    for occupation, ratio in results["skew_measured"].items():
        log_fn(f"  {occupation:<8} planted {corpus.PRONOUN_SKEW[occupation]:.2f}  measured {ratio:.3f}")
    for prompt, text in results["greedy_samples"].items():
        log_fn(f"  {prompt!r} -> {text!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Retrain TinyGPT from scratch (make tinygpt).")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="the folder to write (default: the shipped weights/)")
    main(parser.parse_args().out)
