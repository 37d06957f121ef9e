"""The generation engine: one worker thread owns the model and batches every request.

The asyncio event loop that answers HTTP never runs the model. Requests become
:class:`Sequence` objects (one per choice: a ``prompt`` list and ``n`` make several) and
wait in a queue. The worker thread repeats one *step*:

1. admit waiting sequences, the keys taking turns (see :class:`FairQueue`): their
   prompts are read in one forward pass per chunk of
   about ``PREFILL_TOKENS`` (left padding, an attention mask and per-sequence position
   ids; identical prompts, as with ``n > 1``, are read once), and each samples its
   first token. A sequence that needs one token (``max_tokens=1``) is done there;
2. the others join the running batch, whose key/value cache grows by one column per
   step: one forward pass gives the next token of every running sequence;
3. sequences that are finished (end of text, a stop sequence, ``max_tokens``) or whose
   client went away leave the batch at once, and new ones join at the next step.

Every sequence has its own sampling settings (temperature, top_p, penalties, logit_bias,
stop) and its own ``torch.Generator``, seeded from the request's ``seed`` and the choice's
index, so the same request with the same seed gives the same text.

Returned logprobs are ``log_softmax`` of the model's raw logits at temperature 1
(temperature, top_p and the penalties change the sampling only). ``logit_bias`` is
added to the logits for sampling; whether it shows in the returned logprobs depends on
the provider's mode: "pre-2024" (it does, as OpenAI's API did before March 2024) or
"post-2024" (it does not).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import concurrent.futures
import gc
import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from glassbox.provider.ratelimit import REQUEST_JOBS, REQUEST_KEY
from glassbox.provider.settings import DEFAULT_MAX_BATCH, MAX_PENDING_SEQUENCES, PREFILL_TOKENS
from glassbox.provider.tokens import decode_complete, display_token, stop_holdback, token_byte_table
from glassbox.provider.variants import DERIVED_VARIANTS, apply_variant_

logger = logging.getLogger("glassbox.provider")

GREEDY_TEMPERATURE = 1e-6  #: temperatures below this pick the most likely token
ECHO_ROWS = 256  #: prompt positions turned into logits at once for echo (bounds memory)
CHOOSE_ROWS = 128  #: sequences sampled at once after a prefill (n=128 of one prompt: 128 x 50,257 floats)
COUNTERS = ("steps", "preemptions", "forward_passes", "tokens_generated", "sequences_stop", "sequences_length", "sequences_cancelled",
            "sequences_error", "swaps", "prefill_seconds", "decode_seconds")


@dataclass(frozen=True)
class SamplingParams:
    """How one request wants its sequences generated."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  #: alternatives per token; None = no logprobs
    echo: bool = False  #: also score the prompt's tokens
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    bias_in_logprobs: bool = False  #: "pre-2024": returned logprobs include logit_bias


def choice_seed(seed: int | None, index: int) -> int:
    """The generator seed of choice ``index``: derived from ``seed`` (reproducible), or random."""
    if seed is None:
        return secrets.randbits(63)
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


class Sequence:
    """One choice being generated.

    The worker thread writes it; the event loop reads it. The worker appends to the lists
    first, then sets ``text``, ``released`` and ``kept``, and sets ``finish_reason`` last, so
    a reader who sees ``finish_reason`` set sees the final text and token count.
    """

    def __init__(self, prompt_ids: list[int], params: SamplingParams, seed: int, index: int) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.seed = seed
        self.index = index
        self.job: Job | None = None
        self.generator: torch.Generator | None = None
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None
        self.n_cached = 0
        # results
        self.ids: list[int] = []  #: generated token ids (the end-of-text token included, if generated)
        self.token_logprobs: list[float] = []
        self.top: list[list[tuple[int, float]]] = []
        self.offsets: list[int] = []  #: where each generated token starts in the completion text
        self.prompt_scores: list[tuple[float, list[tuple[int, float]]]] = []  #: echo: tokens 1.. of the prompt
        self.data = b""  #: the generated text's bytes
        self.text = ""  #: the generated text (while generating: up to the last complete character)
        self.released = 0  #: characters of ``text`` that can be streamed (no stop sequence can start there)
        self.kept = 0  #: tokens that can be streamed (all of them once finished, up to a stop sequence)
        self.finish_reason: str | None = None  #: "stop", "length", "cancelled" or "error"
        self.error: tuple[int, str, str] | None = None  #: (status, code, message) when finish_reason is "error"
        self.cancelled = False
        self.queued_step = 0  #: the engine's step count when it was queued
        self.paused = False  #: taken out of the batch to make room for other keys (its cache dropped); resumes later
        self.started_step: int | None = None  #: ... and when it was started (admitted); None while waiting


class Job:
    """The sequences of one HTTP request, and the event that tells the event loop about progress."""

    def __init__(self, sequences: list[Sequence], loop: asyncio.AbstractEventLoop, stream: bool, engine: Engine,
                 owner: str = "?") -> None:
        self.sequences = sequences
        self.loop = loop
        self.stream = stream
        self.engine = engine
        self.owner = owner  #: the key whose queue its sequences wait in
        self.changed = asyncio.Event()
        for sequence in sequences:
            sequence.job = self

    def finished(self) -> bool:
        return all(sequence.finish_reason is not None for sequence in self.sequences)

    def queue_steps(self) -> int:
        """Engine steps the request waited before its last sequence started (so far, if some still wait)."""
        now = self.engine.counters["steps"]
        return max((now if sequence.started_step is None else sequence.started_step) - sequence.queued_step
                   for sequence in self.sequences) if self.sequences else 0

    def notify(self) -> None:
        """Called by the worker thread: wake whoever waits on this job."""
        try:
            self.loop.call_soon_threadsafe(self.changed.set)
        except RuntimeError:  # the event loop has closed (the server is stopping)
            pass

    def cancel(self) -> None:
        """Stop generating for this request (its client went away)."""
        if self.finished():
            return
        for sequence in self.sequences:
            sequence.cancelled = True
        self.engine.wake()

    async def wait(self) -> None:
        """Until every sequence has finished."""
        while not self.finished():
            await self.changed.wait()
            self.changed.clear()


class EngineBusy(Exception):
    """Too many sequences are waiting already."""


class FairQueue:
    """The waiting sequences: one first-in-first-out queue per key, and the keys take turns.

    At each step :meth:`take` goes round the keys that have sequences waiting, taking one
    sequence from each in turn (and going on where it stopped at the previous step), so a
    key with a long backlog cannot hold back another key's request: that one is started
    at the next step. The batch is shared the same way: each key may run up to its share,
    ``max_batch`` divided by the keys that are running or waiting (all of it for a key
    alone), even when the batch is full; if that makes the batch larger than ``max_batch``,
    the engine pauses the sequences of keys above their share (:meth:`Engine._preempt`) and
    resumes them when their key is below its share again. On a CPU every sequence in the
    batch makes each step slower for everyone, so a key does not get more than its share
    while others are working, even if the batch has room. A sequence that needs one token
    takes no slot.
    """

    def __init__(self) -> None:
        self._queues: dict[str, collections.deque[Sequence]] = {}
        self._turns: collections.deque[str] = collections.deque()  #: keys with waiting sequences, whose turn is next first
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def __iter__(self):
        for queue in self._queues.values():
            yield from queue

    def owners(self) -> set[str]:
        return set(self._queues)

    def extend(self, owner: str, sequences: list[Sequence]) -> None:
        queue = self._queues.get(owner)
        if queue is None:
            queue = self._queues[owner] = collections.deque()
            self._turns.append(owner)
        queue.extend(sequences)
        self.size += len(sequences)

    def requeue(self, owner: str, sequences: list[Sequence]) -> None:
        """Put paused sequences back at the front of their key's queue (they go first when it is its turn)."""
        queue = self._queues.get(owner)
        if queue is None:
            queue = self._queues[owner] = collections.deque()
            self._turns.append(owner)
        queue.extendleft(reversed(sequences))
        self.size += len(sequences)

    def _pop(self, owner: str) -> Sequence:
        queue = self._queues[owner]
        sequence = queue.popleft()
        self.size -= 1
        if not queue:
            del self._queues[owner]
            self._turns.remove(owner)
        return sequence

    def take(self, running: dict[str, int], max_batch: int, prompt_budget: int) -> tuple[list[Sequence], list[Sequence]]:
        """``(to start now, cancelled while waiting)``; ``running`` counts the running sequences of each key."""
        counts = collections.Counter(running)
        total = sum(counts.values())
        working = {owner for owner, count in counts.items() if count} | set(self._queues)
        share = max(1, max_batch // max(1, len(working)))
        taken: list[Sequence] = []
        cancelled: list[Sequence] = []
        tokens = 0
        blocked: set[str] = set()
        while self._turns and len(blocked) < len(self._turns):
            owner = self._turns[0]
            self._turns.rotate(-1)  # whatever happens, the next key has the next turn
            if owner in blocked:
                continue
            sequence = self._queues[owner][0]
            if sequence.cancelled:
                cancelled.append(self._pop(owner))
                continue
            one_token = sequence.params.max_tokens == 1
            if not one_token and not (counts[owner] < share and total < 2 * max_batch):
                blocked.add(owner)
                continue
            length = len(sequence.prompt_ids) + len(sequence.ids)  # (a paused sequence reads what it generated, too)
            if taken and tokens + length > prompt_budget:
                break
            taken.append(self._pop(owner))
            tokens += length
            if not one_token:
                counts[owner] += 1
                total += 1
        return taken, cancelled

    def drain(self) -> list[Sequence]:
        sequences = list(self)
        self._queues.clear()
        self._turns.clear()
        self.size = 0
        return sequences


class Engine:
    """Owns the model in a worker thread; see the module docstring."""

    def __init__(self, model_name: str | None = None, *, max_batch: int = DEFAULT_MAX_BATCH,
                 prefill_tokens: int = PREFILL_TOKENS) -> None:
        self.max_batch = max_batch
        self.prefill_tokens = prefill_tokens
        self.start_name, model, tokenizer = self._load(model_name)
        self.base_name = self.start_name
        self.variant = "original"
        self._install(model, tokenizer)
        self._cond = threading.Condition()
        self._pending = FairQueue()
        self._commands: collections.deque[tuple[str, Any, concurrent.futures.Future]] = collections.deque()
        self._active: list[Sequence] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._touched: set[Job] = set()
        self._stopping = False
        # every key exists from the start, so the event loop can read the counters while the worker counts
        self.counters = collections.Counter({key: 0 for key in COUNTERS})
        self._thread = threading.Thread(target=self._run, name="glassbox-engine", daemon=True)

    # ----- the model -------------------------------------------------------------------------

    @staticmethod
    def _load(name: str | None):
        """Load a model the way ``load_model`` does; returns ``(name, model, tokenizer)``."""
        import os

        from glassbox.loader import ModelLoadError, choose_model, load_model

        if name:
            model, tokenizer = load_model(name)
            return name, model, tokenizer
        chosen, _ = choose_model(None)
        try:
            model, tokenizer = load_model(chosen)
        except ModelLoadError:
            if os.environ.get("GLASSBOX_MODEL", "").strip() or chosen == "tinygpt":
                raise
            chosen = "tinygpt"
            model, tokenizer = load_model(chosen)
        return chosen, model, tokenizer

    def _install(self, model, tokenizer) -> None:
        model.eval()
        config = model.config
        self.model = model
        self.tokenizer = tokenizer
        self.n_positions = int(config.n_positions)
        self.vocab_size = int(config.vocab_size)
        eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_id = int(eos if eos is not None else self.vocab_size - 1)
        self.token_bytes = token_byte_table(tokenizer, self.vocab_size)
        self.token_names = [display_token(raw) for raw in self.token_bytes]
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._encode_lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """What is served (operator only: this names the weights)."""
        return {
            "weights": self.base_name,
            "variant": self.variant,
            "variant_description": DERIVED_VARIANTS.get(self.variant, ""),
            "started_with": self.start_name,
            "n_positions": self.n_positions,
            "vocab_size": self.vocab_size,
        }

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens added). Safe to call from any thread."""
        if self._backend is not None:
            return [encoding.ids for encoding in self._backend.encode_batch(texts, add_special_tokens=False)]
        with self._encode_lock:
            return [self.tokenizer.encode(text, add_special_tokens=False) for text in texts]

    # ----- the event loop's side --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def submit(self, sequences: list[Sequence], loop: asyncio.AbstractEventLoop, stream: bool, owner: str | None = None) -> Job:
        """Queue a request's sequences under ``owner`` (default: the current request's key); returns the :class:`Job`."""
        owner = owner or REQUEST_KEY.get() or "?"
        job = Job(sequences, loop, stream, self, owner)
        with self._cond:
            if len(self._pending) + len(sequences) > MAX_PENDING_SEQUENCES:
                raise EngineBusy
            for sequence in sequences:
                sequence.queued_step = self.counters["steps"]
            self._pending.extend(owner, sequences)
            self._cond.notify_all()
        jobs = REQUEST_JOBS.get()
        if jobs is not None:
            jobs.append(job)
        return job

    def request_swap(self, variant: str) -> concurrent.futures.Future:
        """Swap the weights once the running batch has finished; the future holds :meth:`describe`."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._commands.append(("swap", variant, future))
            self._cond.notify_all()
        return future

    def stats(self) -> dict[str, Any]:
        return {
            "active_sequences": len(self._active),
            "pending_sequences": len(self._pending),
            **{key: round(value, 3) if isinstance(value, float) else value for key, value in sorted(self.counters.items())},
        }

    # ----- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                command = None
                with self._cond:
                    while not (self._stopping or self._pending or self._active or self._commands):
                        self._cond.wait()
                    if self._stopping:
                        break
                    if self._commands and not self._active:
                        command = self._commands.popleft()
                    admitted = [] if self._commands else self._take_pending()
                    self.counters["steps"] += 1
                if command is not None:
                    self._execute(command)
                    continue
                try:
                    if admitted:
                        started = time.perf_counter()
                        self._admit(admitted)
                        self._preempt()
                        self.counters["prefill_seconds"] += time.perf_counter() - started
                    if self._active:
                        started = time.perf_counter()
                        self._decode()
                        self.counters["decode_seconds"] += time.perf_counter() - started
                except Exception as error:  # noqa: BLE001 - keep serving; the requests involved get a 500
                    logger.exception("Generation failed")
                    for sequence in [*self._active, *admitted]:
                        if sequence.finish_reason is None:
                            self._fail(sequence, 500, "server_error", f"Generation failed ({type(error).__name__}).")
                    self._active, self._cache, self._mask = [], None, None
                self._notify()
        for sequence in [*self._active, *self._pending.drain()]:
            if sequence.finish_reason is None:
                self._finish(sequence, "cancelled")
        self._notify()

    def _take_pending(self) -> list[Sequence]:
        """Waiting sequences to start now, the keys taking turns (:class:`FairQueue`). Called with the lock held."""
        running = collections.Counter(sequence.job.owner if sequence.job is not None else "?" for sequence in self._active)
        taken, cancelled = self._pending.take(running, self.max_batch, 4 * self.prefill_tokens)
        for sequence in cancelled:
            self._finish(sequence, "cancelled")
        step = self.counters["steps"]
        for sequence in taken:
            if sequence.started_step is None:
                sequence.started_step = step
        return taken

    def _preempt(self) -> None:
        """When the batch holds more than ``max_batch``, pause the sequences of keys above their share, down to it.

        (That happens when a key that had the batch to itself is joined by others.) A key's most
        recently started sequences go first (they lose the least work). A paused sequence keeps what
        it generated and goes back to the front of its key's queue; when it resumes, its prompt and
        tokens are read again (its cache was dropped) and it goes on as if nothing had happened.
        """
        if len(self._active) <= self.max_batch:
            return
        rows_by_owner: dict[str, list[int]] = collections.defaultdict(list)
        for row, sequence in enumerate(self._active):
            rows_by_owner[sequence.job.owner if sequence.job is not None else "?"].append(row)
        with self._cond:
            working = set(rows_by_owner) | self._pending.owners()
        share = max(1, self.max_batch // max(1, len(working)))
        paused: list[int] = []
        for rows in rows_by_owner.values():
            while len(rows) > share:
                paused.append(rows.pop())
        if not paused:
            return
        evicted = [self._active[row] for row in sorted(paused)]
        keep = [row for row in range(len(self._active)) if row not in set(paused)]
        index = torch.tensor(keep, dtype=torch.long)
        self._active = [self._active[row] for row in keep]
        self._mask = self._mask.index_select(0, index)
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        by_owner: dict[str, list[Sequence]] = collections.defaultdict(list)
        for sequence in evicted:
            sequence.paused = True
            by_owner[sequence.job.owner if sequence.job is not None else "?"].append(sequence)
        with self._cond:
            for owner, sequences in by_owner.items():
                self._pending.requeue(owner, sequences)
        self.counters["preemptions"] += len(evicted)

    def _notify(self) -> None:
        touched, self._touched = self._touched, set()
        for job in touched:
            job.notify()

    def _fail(self, sequence: Sequence, status: int, code: str, message: str) -> None:
        sequence.error = (status, code, message)
        self._finish(sequence, "error")

    def _finish(self, sequence: Sequence, reason: str, text: str | None = None, kept: int | None = None) -> None:
        sequence.text = sequence.data.decode("utf-8", errors="replace") if text is None else text
        sequence.released = len(sequence.text)
        sequence.kept = len(sequence.ids) if kept is None else kept
        sequence.finish_reason = reason
        self.counters[f"sequences_{reason}"] += 1
        if sequence.job is not None:
            self._touched.add(sequence.job)

    def _admit(self, sequences: list[Sequence]) -> None:
        ready = []
        resumed = []
        for sequence in sequences:
            if sequence.cancelled:
                self._finish(sequence, "cancelled")
                continue
            if sequence.paused:
                resumed.append(sequence)
                continue
            problem = self._check(sequence)
            if problem:
                self._fail(sequence, 400, *problem)
                continue
            sequence.generator = torch.Generator().manual_seed(sequence.seed)
            if sequence.params.logit_bias:
                ids, values = zip(*sequence.params.logit_bias)
                sequence.bias = (torch.tensor(ids, dtype=torch.long), torch.tensor(values, dtype=torch.float32))
            ready.append(sequence)
        if ready:
            self._prefill(ready)
        if resumed:
            self._resume(resumed)

    def _resume(self, sequences: list[Sequence]) -> None:
        """Paused sequences rejoin the batch: their prompt and generated tokens but the last are read again.

        (The next decoding step feeds the last token, as for any running sequence.)
        """
        chunk: list[Sequence] = []
        for sequence in sorted(sequences, key=lambda item: len(item.prompt_ids) + len(item.ids)):
            length = len(sequence.prompt_ids) + len(sequence.ids) - 1
            if chunk and (len(chunk) + 1) * length > self.prefill_tokens:
                self._resume_chunk(chunk)
                chunk = []
            chunk.append(sequence)
        if chunk:
            self._resume_chunk(chunk)

    def _resume_chunk(self, sequences: list[Sequence]) -> None:
        rows = [sequence.prompt_ids + sequence.ids[:-1] for sequence in sequences]
        length = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), length), self.eos_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for number, row in enumerate(rows):
            input_ids[number, length - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[number, length - len(row):] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        _, cache = self._forward(input_ids, mask, positions, None, True)
        for sequence, row in zip(sequences, rows):
            sequence.n_cached = len(row)
            sequence.paused = False
        self._merge(cache, [(layer.keys, layer.values) for layer in cache.layers], mask, sequences)

    def _check(self, sequence: Sequence) -> tuple[str, str] | None:
        """Checks repeated here because the weights may have been swapped since the request was read."""
        needed = len(sequence.prompt_ids) + sequence.params.max_tokens
        if needed > self.n_positions:
            return ("context_length_exceeded", f"This model's maximum context length is {self.n_positions} tokens. However, you "
                    f"requested {needed} tokens ({len(sequence.prompt_ids)} in the prompt, {sequence.params.max_tokens} for the completion).")
        if any(not 0 <= token < self.vocab_size for token in sequence.prompt_ids) or any(
                not 0 <= token < self.vocab_size for token, _ in sequence.params.logit_bias):
            return ("invalid_value", f"A token id is outside this model's vocabulary (0 to {self.vocab_size - 1}).")
        return None

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, use_cache: bool):
        output = self.model.transformer(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                        past_key_values=cache, use_cache=use_cache)
        self.counters["forward_passes"] += 1
        return output.last_hidden_state, output.past_key_values

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(hidden).float()
        if self.variant == "fp16":  # half precision can overflow; keep the sampler's arithmetic finite
            logits = torch.nan_to_num(logits, nan=-1e4, posinf=1e4, neginf=-1e4)
        return logits

    def _prefill(self, sequences: list[Sequence]) -> None:
        """Read the prompts (identical ones once), sample each first token, and batch the rest."""
        groups: dict[tuple[int, ...], list[Sequence]] = {}
        for sequence in sequences:
            groups.setdefault(tuple(sequence.prompt_ids), []).append(sequence)
        chunk: list[tuple[tuple[int, ...], list[Sequence]]] = []
        for prompt, members in sorted(groups.items(), key=lambda item: len(item[0])):
            if chunk and (len(chunk) + 1) * len(prompt) > self.prefill_tokens:
                self._prefill_chunk(chunk)
                chunk = []
            chunk.append((prompt, members))
        if chunk:
            self._prefill_chunk(chunk)

    def _prefill_chunk(self, chunk: list[tuple[tuple[int, ...], list[Sequence]]]) -> None:
        length = max(len(prompt) for prompt, _ in chunk)
        rows = len(chunk)
        input_ids = torch.full((rows, length), self.eos_id, dtype=torch.long)
        mask = torch.zeros((rows, length), dtype=torch.long)
        for row, (prompt, _) in enumerate(chunk):
            input_ids[row, length - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, length - len(prompt):] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        continuing = any(member.params.max_tokens > 1 for _, members in chunk for member in members)
        hidden, cache = self._forward(input_ids, mask, positions, None, continuing)

        members_flat: list[Sequence] = []
        member_rows: list[int] = []
        for row, (prompt, members) in enumerate(chunk):
            for member in members:
                if member.params.echo and member.params.logprobs is not None:
                    self._score_prompt(member, hidden[row, length - len(prompt):length - 1, :], prompt)
                members_flat.append(member)
                member_rows.append(row)
        for member in members_flat:
            member.n_cached = len(member.prompt_ids)
        for start in range(0, len(members_flat), CHOOSE_ROWS):  # bounded memory: (rows x vocabulary) floats at a time
            members = members_flat[start:start + CHOOSE_ROWS]
            distinct, inverse = torch.unique(torch.tensor(member_rows[start:start + CHOOSE_ROWS]), return_inverse=True)
            logits = self._logits(hidden[distinct, -1, :])  # once per distinct prompt (n > 1 shares it)
            choices = self._choose(logits[inverse] if len(distinct) < len(members) else logits, members)
            for member, (token, logprob, top) in zip(members, choices):
                self._advance(member, token, logprob, top)

        staying = [(member, row) for member, row in zip(members_flat, member_rows) if member.finish_reason is None]
        if not staying:
            return
        index = torch.tensor([row for _, row in staying], dtype=torch.long)
        layers = [(layer.keys.index_select(0, index), layer.values.index_select(0, index)) for layer in cache.layers]
        self._merge(cache, layers, mask.index_select(0, index), [member for member, _ in staying])

    def _score_prompt(self, sequence: Sequence, hidden: torch.Tensor, prompt: tuple[int, ...]) -> None:
        """Echo: the logprob (and alternatives) of each prompt token after the first."""
        params = sequence.params
        targets = torch.tensor(prompt[1:], dtype=torch.long)
        k = params.logprobs or 0
        scores: list[tuple[float, list[tuple[int, float]]]] = []
        for start in range(0, len(targets), ECHO_ROWS):
            logits = self._logits(hidden[start:start + ECHO_ROWS])
            if params.bias_in_logprobs and params.logit_bias:
                ids, values = zip(*params.logit_bias)
                logits[:, list(ids)] += torch.tensor(values, dtype=logits.dtype)
            logprobs = torch.log_softmax(logits, dim=-1)
            chosen = logprobs.gather(1, targets[start:start + ECHO_ROWS, None]).squeeze(1).tolist()
            if k:
                values, indices = logprobs.topk(k, dim=-1)
                tops = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
            else:
                tops = [[] for _ in chosen]
            scores.extend(zip(chosen, tops))
        sequence.prompt_scores = scores

    def _merge(self, cache: Any, layers: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor,
               sequences: list[Sequence]) -> None:
        """Add freshly prefilled sequences to the running batch (both left-padded to the longer length)."""
        if self._cache is None:
            for layer, (keys, values) in zip(cache.layers, layers):
                layer.keys, layer.values = keys, values
            self._cache, self._mask, self._active = cache, mask, list(sequences)
            return
        old_length, new_length = self._mask.shape[1], mask.shape[1]
        length = max(old_length, new_length)
        for layer, (keys, values) in zip(self._cache.layers, layers):
            layer.keys = torch.cat([_pad_left(layer.keys, length - old_length), _pad_left(keys, length - new_length)], dim=0)
            layer.values = torch.cat([_pad_left(layer.values, length - old_length), _pad_left(values, length - new_length)], dim=0)
        self._mask = torch.cat([F.pad(self._mask, (length - old_length, 0)), F.pad(mask, (length - new_length, 0))], dim=0)
        self._active.extend(sequences)

    def _decode(self) -> None:
        """One step of the running batch: feed each sequence's last token, sample the next."""
        active = self._active
        if any(sequence.cancelled for sequence in active):
            self._compact()
            active = self._active
            if not active:
                return
        batch = len(active)
        input_ids = torch.tensor([[sequence.ids[-1]] for sequence in active], dtype=torch.long)
        positions = torch.tensor([[sequence.n_cached] for sequence in active], dtype=torch.long)
        self._mask = torch.cat([self._mask, torch.ones((batch, 1), dtype=self._mask.dtype)], dim=1)
        hidden, self._cache = self._forward(input_ids, self._mask, positions, self._cache, True)
        for sequence in active:
            sequence.n_cached += 1
        logits = self._logits(hidden[:, -1, :])
        for sequence, (token, logprob, top) in zip(active, self._choose(logits, active)):
            self._advance(sequence, token, logprob, top)
        self._compact()

    def _compact(self) -> None:
        """Drop finished and cancelled sequences from the batch, and padding columns nobody needs."""
        keep = []
        for row, sequence in enumerate(self._active):
            if sequence.cancelled and sequence.finish_reason is None:
                self._finish(sequence, "cancelled")
            if sequence.finish_reason is None:
                keep.append(row)
        if not keep:
            self._active, self._cache, self._mask = [], None, None
            return
        if len(keep) < len(self._active):
            index = torch.tensor(keep, dtype=torch.long)
            self._active = [self._active[row] for row in keep]
            self._mask = self._mask.index_select(0, index)
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        used = self._mask.any(dim=0)
        first = int(used.int().argmax())
        if first > 0:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:, :], layer.values[:, :, first:, :]

    def _choose(self, logits: torch.Tensor, sequences: list[Sequence]) -> list[tuple[int, float | None, list | None]]:
        """Pick the next token of each row with its own settings; return (token, logprob, top alternatives)."""
        rows = len(sequences)
        biased = logits
        if any(sequence.bias is not None for sequence in sequences):
            biased = logits.clone()
            for row, sequence in enumerate(sequences):
                if sequence.bias is not None:
                    biased[row].index_add_(0, sequence.bias[0], sequence.bias[1])
        sampling = biased
        if any(sequence.params.presence_penalty or sequence.params.frequency_penalty for sequence in sequences):
            sampling = biased.clone()
            for row, sequence in enumerate(sequences):
                params = sequence.params
                if (params.presence_penalty or params.frequency_penalty) and sequence.ids:
                    counts = torch.bincount(torch.tensor(sequence.ids), minlength=self.vocab_size).float()[: self.vocab_size]
                    sampling[row] -= counts * params.frequency_penalty + (counts > 0).float() * params.presence_penalty

        tokens = [0] * rows
        greedy = [row for row, sequence in enumerate(sequences) if sequence.params.temperature < GREEDY_TEMPERATURE]
        if greedy:
            for row, token in zip(greedy, sampling[greedy].argmax(dim=-1).tolist()):
                tokens[row] = token
        sampled = [row for row, sequence in enumerate(sequences) if sequence.params.temperature >= GREEDY_TEMPERATURE]
        if sampled:
            # Inverse-CDF sampling with one uniform draw from each sequence's own generator (much faster than
            # torch.multinomial over 50,257 tokens); the draw is in (0, 1], so a zero-probability token is never picked.
            temperatures = [sequences[row].params.temperature for row in sampled]
            scaled = sampling if len(sampled) == rows else sampling[sampled]
            if any(temperature != 1.0 for temperature in temperatures):
                scaled = scaled / torch.tensor(temperatures, dtype=scaled.dtype)[:, None]
            probabilities = torch.softmax(scaled, dim=-1)
            draws = torch.tensor([1.0 - float(torch.rand((), generator=sequences[row].generator, dtype=torch.float64))
                                  for row in sampled], dtype=torch.float64)
            last = probabilities.shape[1] - 1
            plain = [position for position, row in enumerate(sampled) if sequences[row].params.top_p >= 1.0]
            if plain:  # (torch accumulates a float32 cumsum in float64 on the CPU: accurate and fast)
                cdf = (probabilities if len(plain) == len(sampled) else probabilities[plain]).cumsum(dim=-1)
                targets = (draws[plain] * cdf[:, -1].double()).to(cdf.dtype).unsqueeze(1)
                picks = torch.searchsorted(cdf, targets).squeeze(1).clamp(max=last).tolist()
                for position, pick in zip(plain, picks):
                    tokens[sampled[position]] = pick
            for position, row in enumerate(sampled):
                top_p = sequences[row].params.top_p
                if top_p >= 1.0:
                    continue
                sorted_probs, order = torch.sort(probabilities[position], descending=True)
                outside = (sorted_probs.cumsum(0) - sorted_probs) > top_p  # keep the smallest set reaching top_p
                outside[0] = False
                cdf = sorted_probs.masked_fill(outside, 0.0).cumsum(0)
                pick = int(torch.searchsorted(cdf, (draws[position:position + 1] * cdf[-1]).to(cdf.dtype)).clamp(max=last))
                tokens[row] = int(order[pick])

        results: list[tuple[int, float | None, list | None]] = [(token, None, None) for token in tokens]
        wanted = [row for row, sequence in enumerate(sequences) if sequence.params.logprobs is not None]
        if wanted:
            source = logits[wanted]
            for position, row in enumerate(wanted):
                if sequences[row].params.bias_in_logprobs and sequences[row].bias is not None:
                    source[position] = biased[row]
            logprobs = torch.log_softmax(source, dim=-1)
            chosen = logprobs.gather(1, torch.tensor([tokens[row] for row in wanted])[:, None]).squeeze(1).tolist()
            k_max = max(sequences[row].params.logprobs or 0 for row in wanted)
            top_ids: list[list[int]] = [[] for _ in wanted]
            top_values: list[list[float]] = [[] for _ in wanted]
            if k_max:
                values, indices = logprobs.topk(k_max, dim=-1)
                top_ids, top_values = indices.tolist(), values.tolist()
            for position, row in enumerate(wanted):
                k = sequences[row].params.logprobs or 0
                results[row] = (tokens[row], chosen[position], list(zip(top_ids[position][:k], top_values[position][:k])))
        return results

    def _advance(self, sequence: Sequence, token: int, logprob: float | None, top: list | None) -> None:
        """Append one generated token; finish the sequence if it is done; publish progress."""
        params = sequence.params
        sequence.ids.append(token)
        if logprob is not None:
            sequence.token_logprobs.append(logprob)
            sequence.top.append(top or [])
        sequence.offsets.append(len(sequence.text))
        self.counters["tokens_generated"] += 1
        if token == self.eos_id:
            self._finish(sequence, "stop")
            return
        previous = len(sequence.text)
        sequence.data += self.token_bytes[token]
        text = decode_complete(sequence.data)
        if params.stop:
            longest = max(len(stop) for stop in params.stop)
            start = max(0, previous - longest + 1)
            hits = [found for found in (text.find(stop, start) for stop in params.stop) if found >= 0]
            if hits:
                cut = min(hits)
                self._finish(sequence, "stop", text=text[:cut], kept=bisect.bisect_left(sequence.offsets, cut))
                return
        if len(sequence.ids) >= params.max_tokens:
            self._finish(sequence, "length")
            return
        sequence.text = text
        released = len(text) - (stop_holdback(text, params.stop) if params.stop else 0)
        kept = sequence.kept
        while kept < len(sequence.ids):
            end = sequence.offsets[kept + 1] if kept + 1 < len(sequence.offsets) else len(text)
            if end > released:
                break
            kept += 1
        sequence.released, sequence.kept = released, kept
        if sequence.job is not None and sequence.job.stream:
            self._touched.add(sequence.job)

    # ----- swapping the weights ---------------------------------------------------------------

    def _execute(self, command: tuple[str, Any, concurrent.futures.Future]) -> None:
        kind, argument, future = command
        try:
            if kind == "swap":
                self._swap(str(argument).strip())
            future.set_result(self.describe())
        except Exception as error:  # noqa: BLE001 - handed to the admin request
            future.set_exception(error)

    def _swap(self, variant: str) -> None:
        started = time.perf_counter()
        large = sum(p.numel() for p in self.model.parameters()) > 50_000_000
        if variant in DERIVED_VARIANTS:
            base = self.start_name if variant == "original" else self.base_name
            if base == self.base_name and variant == self.variant:
                return
            if base == self.base_name and self.variant == "original":
                model, tokenizer = self.model, self.tokenizer
            else:  # the current weights were changed in place: read the base again
                if large:
                    self.model = None
                    gc.collect()
                _, model, tokenizer = self._load(base)
            model = apply_variant_(model, variant)
            self._install(model, tokenizer)
            self.base_name, self.variant = base, variant
        else:
            name, model, tokenizer = self._load(variant)
            self._install(model, tokenizer)
            self.base_name, self.variant = name, "original"
        gc.collect()
        self.counters["swaps"] += 1
        print(f"Swapped the weights to {self.base_name} ({self.variant}) in {time.perf_counter() - started:.1f} s.", flush=True)


def _pad_left(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    """Pad the sequence axis (dim 2 of a (batch, heads, seq, dim) tensor) on the left with zeros."""
    if amount == 0:
        return tensor
    return F.pad(tensor, (0, 0, amount, 0))
