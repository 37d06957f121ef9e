"""Benchmark the course's provider (part of ``make bench``; run alone with ``python scripts/bench_provider.py``).

Three tables, all measured in this run on this machine:

1. Overhead: one completion of 32 new tokens (greedy) through the provider (HTTP, the
   openai client, the batching engine) against ``model.generate`` on the same prompt and
   settings in this process, for TinyGPT and gpt2-untrained. Both use 1 torch thread (the
   provider's default). Median of 5 after a warm-up. Target: at most 10 % overhead.
2. A class: 30 clients in parallel, each with its own key and its own openai client
   (default retries, so a 429 would be retried as the client does), each sending 20
   completions of 16 tokens (end-of-text suppressed, so all 16 are generated), with
   TinyGPT. Requests that succeeded, requests per second, latency p50/p95/max, the
   slowest ``GET /health`` while it ran (polled every 0.1 s) and the server's peak memory.
   Targets: every request succeeds, p95 at most 1.5 s, /health always within 1 s.
3. Chapter workloads: chapter 07's logit recovery (25 requests, each a list of 80 short
   prompts, ``max_tokens=1, logprobs=5``, ``logit_bias`` on 4 tokens, pre-2024 mode) and
   chapter 08's sampling (2,048 one-token samples: 16 prompts x n=128).
4. Fairness: a class's limits (``--rpm 60 --tpm 20000``), 29 polite keys as in table 2,
   first alone, then beside one abusing key that sends the heaviest requests its limits
   allow (as many prompts x max_tokens as its tokens per minute pay for, again as soon as
   ``retry-after`` lets it). The polite keys' p50/p95 and the slowest ``/health`` in both
   runs. Targets: polite p95 with the abuser at most 2x without; /health within 1 s.

    python scripts/bench_provider.py                 # all three
    python scripts/bench_provider.py --quick         # TinyGPT only (no gpt2-untrained rows)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from glassbox.course_env import apply_quiet_env  # noqa: E402

PROMPT = "Once upon a time, the nurse and the teacher walked to the market, and"
NEW_TOKENS = 32
REPEATS = 5
CLASS_CLIENTS, CLASS_REQUESTS, CLASS_TOKENS = 30, 20, 16
FAIR_RPM, FAIR_TPM = 60, 20_000  #: the README's example limits for a class
NO_END = {"50256": -100}  # suppress <|endoftext|> so every completion has all its tokens


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class PeakRSS:
    """Samples one process's resident memory in a thread; keeps the peak (MB)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(0.1)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


@dataclass
class OverheadRow:
    model: str
    direct_s: float
    provider_s: float
    tokens: int
    same_text: bool

    @property
    def overhead(self) -> float:
        return (self.provider_s - self.direct_s) / self.direct_s * 100


def bench_overhead(model_name: str) -> OverheadRow:
    """Median seconds for 32 greedy tokens: model.generate here vs a completion through the provider."""
    import torch

    from glassbox.loader import load_model
    from glassbox.provider import start_provider

    torch.set_num_threads(1)
    model, tokenizer = load_model(model_name, verbose=False)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]

    def direct() -> tuple[float, str]:
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id, suppress_tokens=[tokenizer.eos_token_id])
        return time.perf_counter() - started, tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    with start_provider(model_name, threads=1) as provider:
        client = provider.client(max_retries=0)

        def served() -> tuple[float, str, int]:
            started = time.perf_counter()
            reply = client.completions.create(model=provider.model_name, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0,
                                              logit_bias=NO_END)
            return time.perf_counter() - started, reply.choices[0].text, reply.usage.completion_tokens

        direct()
        served()
        direct_times, served_times = [], []
        for _ in range(REPEATS):
            seconds, direct_text = direct()
            direct_times.append(seconds)
            seconds, served_text, tokens = served()
            served_times.append(seconds)
    return OverheadRow(model_name, _median(direct_times), _median(served_times), tokens, served_text == direct_text)


@dataclass
class ClassRow:
    ok: int
    total: int
    retried: int
    seconds: float
    p50: float
    p95: float
    worst: float
    health_max: float
    peak_mb: float
    server_cpu: float

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds


def bench_class(model_name: str = "tinygpt") -> ClassRow:
    """30 clients x 20 completions of 16 tokens, each client with its own key, all at once."""
    import httpx
    import openai

    from glassbox.provider import start_provider

    with start_provider(model_name, n_keys=CLASS_CLIENTS) as provider:
        memory = PeakRSS(provider.pid)
        server = psutil.Process(provider.pid)
        cpu_before = sum(server.cpu_times()[:2])
        latencies: list[float] = []
        failures: list[str] = []
        retried = [0]
        health: list[float] = []
        done = threading.Event()
        lock = threading.Lock()

        def poll_health() -> None:
            with httpx.Client(timeout=10) as http:
                while not done.is_set():
                    started = time.perf_counter()
                    http.get(f"http://127.0.0.1:{provider.port}/health")
                    health.append(time.perf_counter() - started)
                    done.wait(0.1)

        def learner(number: int) -> None:
            client = openai.OpenAI(base_url=provider.base_url, api_key=provider.api_keys[number])  # default retries
            for request in range(CLASS_REQUESTS):
                started = time.perf_counter()
                try:
                    response = client.completions.with_raw_response.create(
                        model=provider.model_name, prompt=f"Learner {number} asks question {request}: the nurse",
                        max_tokens=CLASS_TOKENS, logit_bias=NO_END)
                    reply = response.parse()
                    assert reply.usage.completion_tokens == CLASS_TOKENS
                    with lock:
                        latencies.append(time.perf_counter() - started)
                        retried[0] += response.retries_taken
                except Exception as error:  # noqa: BLE001 - counted, and shown below
                    with lock:
                        failures.append(f"{type(error).__name__}: {error}")

        poller = threading.Thread(target=poll_health, daemon=True)
        poller.start()
        threads = [threading.Thread(target=learner, args=(number,)) for number in range(CLASS_CLIENTS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        done.set()
        poller.join()
        server_cpu = sum(server.cpu_times()[:2]) - cpu_before
        peak = memory.stop()
    for failure in failures[:3]:
        print("  failed:", failure)
    return ClassRow(len(latencies), CLASS_CLIENTS * CLASS_REQUESTS, retried[0], seconds, _percentile(latencies, 50),
                    _percentile(latencies, 95), max(latencies, default=float("nan")), max(health, default=float("nan")), peak,
                    server_cpu)


@dataclass
class FairRow:
    run: str
    ok: int
    total: int
    p50: float
    p95: float
    worst: float
    health_max: float
    abuser_ok: int = 0
    abuser_refused: int = 0
    abuser_tokens: int = 0


def _fair_run(provider, polite_keys: list[str], abuser_key: str | None) -> FairRow:
    """The polite keys as in :func:`bench_class` (and the abuser, if given) against one provider; the polite figures."""
    import httpx
    import openai

    latencies: list[float] = []
    health: list[float] = []
    failures: list[str] = []
    abuser = {"ok": 0, "refused": 0, "tokens": 0}
    done = threading.Event()
    lock = threading.Lock()

    def poll_health() -> None:
        with httpx.Client(timeout=10) as http:
            while not done.is_set():
                started = time.perf_counter()
                http.get(f"http://127.0.0.1:{provider.port}/health")
                health.append(time.perf_counter() - started)
                done.wait(0.1)

    def polite(number: int, key: str) -> None:
        client = openai.OpenAI(base_url=provider.base_url, api_key=key)  # default retries
        for request in range(CLASS_REQUESTS):
            started = time.perf_counter()
            try:
                reply = client.completions.create(model=provider.model_name, prompt=f"Learner {number} asks question {request}: "
                                                  "the nurse", max_tokens=CLASS_TOKENS, logit_bias=NO_END)
                assert reply.usage.completion_tokens == CLASS_TOKENS
                with lock:
                    latencies.append(time.perf_counter() - started)
            except Exception as error:  # noqa: BLE001 - counted, and shown below
                with lock:
                    failures.append(f"{type(error).__name__}: {error}")

    def abuse(key: str) -> None:
        """The heaviest requests the limits allow: every prompt as long as the context lets it generate."""
        client = openai.OpenAI(base_url=provider.base_url, api_key=key, max_retries=0)
        room = 128 - 8  # TinyGPT's context minus the prompt: max_tokens per sequence
        count = FAIR_TPM // (8 + room)
        prompts = [f"Item {i}:" for i in range(count)]
        while not done.is_set():
            try:
                reply = client.completions.create(model=provider.model_name, prompt=prompts, max_tokens=room, logit_bias=NO_END)
                abuser["ok"] += 1
                abuser["tokens"] += reply.usage.completion_tokens
            except openai.RateLimitError as error:
                abuser["refused"] += 1
                done.wait(float(error.response.headers.get("retry-after", "1")))
            except openai.APIError as error:  # e.g. its prompts do not fit: reported, and it stops
                failures.append(f"abuser: {type(error).__name__}: {error}")
                return

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    abuser_thread = None
    if abuser_key is not None:
        abuser_thread = threading.Thread(target=abuse, args=(abuser_key,), daemon=True)
        abuser_thread.start()
        time.sleep(2.0)  # its first request is in the engine before the class starts
    threads = [threading.Thread(target=polite, args=(number, key)) for number, key in enumerate(polite_keys)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    poller.join()
    if abuser_thread is not None:
        abuser_thread.join(300)
    for failure in failures[:3]:
        print("  failed:", failure)
    return FairRow("with the abuser" if abuser_key else "polite keys alone", len(latencies), len(polite_keys) * CLASS_REQUESTS,
                   _percentile(latencies, 50), _percentile(latencies, 95), max(latencies, default=float("nan")),
                   max(health, default=float("nan")), abuser["ok"], abuser["refused"], abuser["tokens"])


def bench_fairness(model_name: str = "tinygpt") -> list[FairRow]:
    """29 polite keys alone, then with one key abusing its limits (each run on a fresh provider)."""
    from glassbox.provider import start_provider

    rows = []
    for abusing in (False, True):
        with start_provider(model_name, n_keys=CLASS_CLIENTS, rpm=FAIR_RPM, tpm=FAIR_TPM) as provider:
            keys = provider.api_keys
            rows.append(_fair_run(provider, keys[1:], keys[0] if abusing else None))
    return rows


@dataclass
class WorkloadRow:
    model: str
    name: str
    seconds: float
    detail: str


def bench_workloads(model_name: str) -> list[WorkloadRow]:
    """Chapter 07's logit recovery and chapter 08's sampling, as the chapters send them."""
    from glassbox.provider import start_provider

    rows = []
    with start_provider(model_name, logit_bias_mode="pre-2024") as provider:
        client = provider.client(max_retries=0)
        prompts = [f"Fact {i}: the" for i in range(80)]
        client.completions.create(model=provider.model_name, prompt=prompts[:4], max_tokens=1)  # warm-up
        started = time.perf_counter()
        for request in range(25):
            bias = {str(1000 + 4 * request + k): 100 for k in range(4)}
            reply = client.completions.create(model=provider.model_name, prompt=prompts, max_tokens=1, logprobs=5,
                                              logit_bias=bias, temperature=0)
            assert len(reply.choices) == 80
        rows.append(WorkloadRow(model_name, "ch07: 25 requests x 80 prompts, 1 token, logprobs=5", time.perf_counter() - started,
                                f"{25 * 80 / (time.perf_counter() - started):.0f} prompts/s"))
        started = time.perf_counter()
        reply = client.completions.create(model=provider.model_name, prompt=[f"Sample {i}: The nurse said" for i in range(16)],
                                          n=128, max_tokens=1, seed=0)
        assert len(reply.choices) == 2048
        rows.append(WorkloadRow(model_name, "ch08: 2,048 one-token samples (16 prompts x n=128)", time.perf_counter() - started,
                                f"{2048 / (time.perf_counter() - started):.0f} samples/s"))
    return rows


def format_overhead(rows: list[OverheadRow]) -> str:
    lines = [f"{'model':<16} {'generate s':>10} {'provider s':>10} {'overhead':>9} {'tokens':>6}  same text",
             "-" * 66]
    for row in rows:
        lines.append(f"{row.model:<16} {row.direct_s:>10.3f} {row.provider_s:>10.3f} {row.overhead:>8.1f}% {row.tokens:>6}  "
                     f"{'yes' if row.same_text else 'NO'}")
    return "\n".join(lines)


def format_class(row: ClassRow) -> str:
    return "\n".join([
        f"{'succeeded':>12} {'req/s':>7} {'p50 s':>6} {'p95 s':>6} {'max s':>6} {'health max s':>12} {'server peak MB':>14} "
        f"{'retries':>7} {'server CPU s':>12}",
        "-" * 91,
        f"{f'{row.ok}/{row.total}':>12} {row.per_second:>7.1f} {row.p50:>6.2f} {row.p95:>6.2f} {row.worst:>6.2f} "
        f"{row.health_max:>12.3f} {row.peak_mb:>14.0f} {row.retried:>7} {row.server_cpu:>12.1f}",
        f"(wall {row.seconds:.1f} s; the server used {row.server_cpu / row.seconds:.0%} of one CPU: on a busy machine it waits "
        "for its turn, and every latency grows)",
    ])


def format_fairness(rows: list[FairRow]) -> str:
    lines = [f"{'run':<18} {'polite ok':>10} {'p50 s':>6} {'p95 s':>6} {'max s':>6} {'health max s':>12} "
             f"{'abuser ok/429':>13} {'abuser tokens':>13}", "-" * 93]
    for row in rows:
        abuser = f"{row.abuser_ok}/{row.abuser_refused}" if row.run != "polite keys alone" else "-"
        tokens = f"{row.abuser_tokens:,}" if row.run != "polite keys alone" else "-"
        lines.append(f"{row.run:<18} {f'{row.ok}/{row.total}':>10} {row.p50:>6.2f} {row.p95:>6.2f} {row.worst:>6.2f} "
                     f"{row.health_max:>12.3f} {abuser:>13} {tokens:>13}")
    if len(rows) == 2 and rows[0].p95 > 0:
        lines.append(f"(polite p95 with the abuser / without: {rows[1].p95 / rows[0].p95:.2f}x)")
    return "\n".join(lines)


def format_workloads(rows: list[WorkloadRow]) -> str:
    lines = [f"{'model':<16} {'workload':<52} {'seconds':>8}  rate", "-" * 92]
    lines += [f"{row.model:<16} {row.name:<52} {row.seconds:>8.2f}  {row.detail}" for row in rows]
    return "\n".join(lines)


def run(quick: bool = False) -> int:
    """Run and print the three tables (a missed target is reported, not an error: timings depend on the machine)."""
    apply_quiet_env()
    models = ["tinygpt"] if quick else ["tinygpt", "gpt2-untrained"]
    print("\nProvider benchmark (this machine, this run)")
    overhead = [bench_overhead(name) for name in models]
    print("\n1. Overhead of the provider: 32 greedy tokens, median of 5, 1 torch thread on both sides")
    print(format_overhead(overhead))
    klass = bench_class()
    print(f"\n2. A class: {CLASS_CLIENTS} clients with their own keys x {CLASS_REQUESTS} completions of {CLASS_TOKENS} tokens "
          "(TinyGPT, all at once)")
    print(format_class(klass))
    workloads = [row for name in models for row in bench_workloads(name)]
    print("\n3. Chapter workloads")
    print(format_workloads(workloads))
    fairness = bench_fairness()
    print(f"\n4. Fairness: --rpm {FAIR_RPM} --tpm {FAIR_TPM:,}; {CLASS_CLIENTS - 1} polite keys x {CLASS_REQUESTS} completions "
          f"of {CLASS_TOKENS} tokens, alone and beside one key sending the heaviest requests its limits allow (TinyGPT)")
    print(format_fairness(fairness))
    missed = []
    missed += [f"overhead {row.model} {row.overhead:.0f}% > 10%" for row in overhead if row.overhead > 10]
    if klass.ok != klass.total:
        missed.append(f"{klass.total - klass.ok} requests failed")
    if klass.p95 > 1.5:
        missed.append(f"p95 {klass.p95:.2f} s > 1.5 s")
    if klass.health_max > 1.0:
        missed.append(f"/health took {klass.health_max:.2f} s > 1 s")
    alone, abused = fairness
    if abused.p95 > 2 * alone.p95:
        missed.append(f"fairness: polite p95 {abused.p95:.2f} s with the abuser > 2 x {alone.p95:.2f} s")
    if max(row.health_max for row in fairness) > 1.0:
        missed.append(f"fairness: /health took {max(row.health_max for row in fairness):.2f} s > 1 s")
    print("\nTargets: overhead <= 10 %; class: all succeed, p95 <= 1.5 s, /health <= 1 s; fairness: polite p95 with the "
          "abuser <= 2x without, /health <= 1 s.",
          "All met." if not missed else "Missed: " + "; ".join(missed))
    print(f"Machine: {psutil.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in psutil.getloadavg())} "
          "(other work on the machine slows every figure).")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the course's provider.")
    parser.add_argument("--quick", action="store_true", help="TinyGPT only")
    parser.add_argument("--fairness-only", action="store_true", help="only table 4 (fairness)")
    args = parser.parse_args(argv)
    if args.fairness_only:
        apply_quiet_env()
        rows = bench_fairness()
        print(f"\n4. Fairness: --rpm {FAIR_RPM} --tpm {FAIR_TPM:,}; {CLASS_CLIENTS - 1} polite keys x {CLASS_REQUESTS} "
              f"completions of {CLASS_TOKENS} tokens, alone and beside one key sending the heaviest requests its limits allow")
        print(format_fairness(rows))
        print(f"Machine: {psutil.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in psutil.getloadavg())} "
              "(other work on the machine slows every figure).")
        return 0
    return run(quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
