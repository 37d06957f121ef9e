"""Checks for chapter 01, "Open, open weights, or closed?".

Each ``check_*`` function calls the learner's function and compares the result with a
reference computed here: the classification by the check's own reading of the OSI Open
Source AI Definition 1.0, the openness sums published in the two openness tables of
``data/``, the parameter count of Llama-style models built on PyTorch's meta device by
``transformers`` itself, and the licence terms in ``data/licences.csv``.

Known mistakes are computed from the same inputs with one step changed (a head counted
as tied, grouped-query attention ignored, SwiGLU's third matrix forgotten, "partial"
counted as 0...), so their hints name the mistake for whichever case triggered it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from glassbox.exercise_checks.feedback import call_learner, check_number, check_type, fail, passed
from glassbox.paths import DATA_DIR

__all__ = [
    "LABELS",
    "check_classify_release",
    "check_count_llama_parameters",
    "check_licence_allows",
    "check_openness_score",
    "llama_config",
    "reference_classification",
    "reference_llama_count",
]

LABELS = ("open source", "open weights", "open access", "closed")
"""The four answers of exercise 1."""


def _rows(name: str) -> list[dict[str, str]]:
    with (DATA_DIR / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- exercise 1

def reference_classification(release: dict[str, bool]) -> str:
    """Classify a release by its artefacts, following the OSI Open Source AI Definition 1.0.

    Open source needs all three required components (parameters, complete training code,
    data information) under OSI-approved terms; anything less with the weights out is
    open weights; no weights but an API is open access; nothing is closed.
    """
    if release["weights"] and release["training_code"] and release["data_information"] \
            and release["osi_licence"]:
        return "open source"
    if release["weights"]:
        return "open weights"
    if release["api"]:
        return "open access"
    return "closed"


def _release(weights: bool, code: bool, data: bool, osi: bool, api: bool) -> dict[str, bool]:
    return {"weights": weights, "training_code": code, "data_information": data,
            "osi_licence": osi, "api": api}


def _release_cases() -> list[tuple[str, dict[str, bool]]]:
    """Releases to classify. OSI approval and weights come from data/licences.csv; code and
    data follow the "opencode" and "llmdata" columns of "Opening up ChatGPT"."""
    licences = {row["model"]: row for row in _rows("licences.csv")}

    def osi(model: str) -> bool:
        return licences[model]["osi_approved"] == "yes"

    def weights(model: str) -> bool:
        return licences[model]["weights_released"] == "yes"

    return [
        ("TinyGPT (corpus generator, training code, weights, MIT)",
         _release(weights("TinyGPT"), True, True, osi("TinyGPT"), False)),
        ("GPT-2 (weights and inference code, MIT; WebText never released)",
         _release(weights("GPT-2"), False, False, osi("GPT-2"), False)),
        ("Llama 3 (weights under Meta's community licence; no data, no training code)",
         _release(weights("Llama 3"), False, False, osi("Llama 3"), True)),
        ("Mistral 7B (weights under Apache-2.0; no data)",
         _release(weights("Mistral 7B"), False, False, osi("Mistral 7B"), True)),
        ("OLMo (weights, training code and the Dolma data, Apache-2.0)",
         _release(weights("OLMo"), True, True, osi("OLMo"), True)),
        ("ChatGPT (an app and an API, nothing else)",
         _release(weights("GPT-4 / ChatGPT"), False, False, osi("GPT-4 / ChatGPT"), True)),
        ("weights, training code and data under a licence that restricts uses (not OSI-approved)",
         _release(True, True, True, False, False)),
        ("a model used inside a company and never offered to anyone",
         _release(False, False, False, False, False)),
        ("training code and data published, but not the weights; an API serves the model",
         _release(False, True, True, True, True)),
    ]


def _classification_hint(release: dict[str, bool], got: str, expected: str) -> str:
    if got == "open source" and release["weights"] and not release["osi_licence"]:
        return ("Weights, code and data are not enough: the OSI definition also asks for OSI-approved "
                "terms, and this licence restricts who may use it for what.")
    if got == "open source" and release["weights"]:
        return ("An OSI-approved licence on the weights is not enough: the OSI definition also "
                "requires the complete training code and data information. That is open weights.")
    if got == "open source" and not release["weights"]:
        return "Without the parameters nothing can be open source or open weights: the weights come first."
    if expected == "open source":
        return ("All three required components (parameters, training code, data information) are "
                "here under OSI-approved terms: that is open source.")
    if expected == "open access":
        return ("No weights, but an API anyone can call: that is open access. Access is not "
                "openness, but it is not 'closed' either.")
    if expected == "open weights":
        return "The weights are released, whatever else is missing: open weights."
    if expected == "closed" and got == "open access":
        return "Open access needs an API or app that others can use; this model is offered to no one."
    return "Check the rules in order: open source, then open weights, then open access, then closed."


def check_classify_release(classify_release: Callable[[dict[str, bool]], str]) -> None:
    """Check ``classify_release(release) -> str`` on real and made-up releases."""
    cases = _release_cases()
    for label, release in cases:
        expected = reference_classification(release)
        got = call_learner(classify_release, dict(release), name="classify_release",
                           hints={KeyError: "The dict's keys are: " + ", ".join(release) + "."})
        check_type(got, str, f"classify_release for {label}",
                   hint="Return one of: " + ", ".join(repr(x) for x in LABELS) + ".")
        if got not in LABELS:
            near = got.strip().lower().replace("-", " ").replace("_", " ")
            if near in LABELS:
                fail(f"For {label} you returned {got!r}; write it exactly as {near!r}.",
                     "The four answers are: " + ", ".join(repr(x) for x in LABELS) + ".")
            if "free" in near:
                fail(f"For {label} you returned {got!r}.",
                     "Free of charge says nothing about openness: a free app can be closed and an "
                     "open model can cost money to run. Answer with one of " +
                     ", ".join(repr(x) for x in LABELS) + ".")
            fail(f"For {label} you returned {got!r}, which is not one of the four answers.",
                 "Return one of: " + ", ".join(repr(x) for x in LABELS) + ".")
        if got != expected:
            fail(f"{label}: expected {expected!r}, got {got!r}.",
                 _classification_hint(release, got, expected))
    passed(f"classify_release: all {len(cases)} releases classified as the OSI definition reads, "
           "from TinyGPT (open source) to ChatGPT (open access).")


# --------------------------------------------------------------------------- exercise 2

_SCORES = {"open": 1.0, "partial": 0.5, "closed": 0.0}


def _table(name: str, n_dimensions: int, sum_column: str) -> tuple[list[str], list[dict[str, str]]]:
    rows = _rows(name)
    columns = list(rows[0])
    dimensions = [c for c in columns if all(r[c] in _SCORES for r in rows)]
    if len(dimensions) != n_dimensions:
        raise RuntimeError(f"{name}: found {len(dimensions)} scored columns, expected {n_dimensions}")
    for row in rows:  # the published sums follow open = 1, partial = 0.5, closed = 0
        own = sum(_SCORES[row[d]] for d in dimensions)
        if not math.isclose(own, float(row[sum_column])):
            raise RuntimeError(f"{name}: the published sum for {row['yaml']} is {row[sum_column]}, "
                               f"the scores add up to {own}")
    return dimensions, rows


def check_openness_score(openness_score: Callable[[dict[str, str], list[str]], float]) -> None:
    """Check ``openness_score(row, dimensions) -> float`` against the published sums.

    Every row of both openness tables is scored; the reference is the table's own sum
    column (``openness_sum_of_14``, ``sum_of_12``), which the check first confirms follows
    open = 1, partial = 0.5, closed = 0.
    """
    tables = [("openness_opening_up_chatgpt.csv", 14, "openness_sum_of_14", "llmbase"),
              ("openness_osai_index.csv", 12, "sum_of_12", "name")]
    n_rows = 0
    for name, n_dims, sum_column, name_column in tables:
        dimensions, rows = _table(name, n_dims, sum_column)
        for row in rows:
            expected = float(row[sum_column])
            counts = {value: sum(row[d] == value for d in dimensions) for value in _SCORES}
            mistakes = [
                (counts["open"], "You gave 'partial' 0 points: it counts half (0.5)."),
                (counts["open"] + counts["partial"], "You gave 'partial' a full point: it counts half (0.5)."),
                (counts["closed"] + 0.5 * counts["partial"], "You counted 'closed' as open: 'open' is 1, "
                                                             "'closed' is 0."),
                (expected / len(dimensions), "That is the average; the score asked for is the sum."),
                (100 * expected / len(dimensions), "That is a percentage; the score asked for is the sum "
                                                   "of the points."),
            ]
            mistakes = [(v, h) for v, h in mistakes if not math.isclose(v, expected)]
            got = call_learner(openness_score, dict(row), list(dimensions), name="openness_score",
                               hints={KeyError: "Score only the columns named in `dimensions`, and map "
                                                "'open', 'partial' and 'closed' to 1, 0.5 and 0.",
                                      ValueError: "The cells hold words ('open', 'partial', 'closed'), "
                                                  "not numbers: map each word to its points."})
            check_number(got, expected, f"openness_score for {row[name_column]} in {name}",
                         known_mistakes=mistakes, rel_tol=1e-9, abs_tol=1e-9,
                         hint=f"Add up the points of the {len(dimensions)} dimensions: open = 1, "
                              "partial = 0.5, closed = 0.")
            n_rows += 1
    passed(f"openness_score: equals the published sum for all {n_rows} rows of both openness tables.")


# --------------------------------------------------------------------------- exercise 3

def llama_config(row: dict[str, str]) -> dict[str, Any]:
    """A row of data/model_configs.csv as the keys of a Llama/Mistral ``config.json``."""
    return {
        "vocab_size": int(row["vocab_size"]),
        "hidden_size": int(row["hidden_size"]),
        "intermediate_size": int(row["intermediate_size"]),
        "num_hidden_layers": int(row["num_layers"]),
        "num_attention_heads": int(row["num_heads"]),
        "num_key_value_heads": int(row["num_kv_heads"]),
        "head_dim": int(row["head_dim"]),
        "tie_word_embeddings": row["tied_embeddings"] == "yes",
    }


@lru_cache(maxsize=16)
def _meta_count(items: tuple[tuple[str, Any], ...]) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**dict(items)))
    return sum(p.numel() for p in model.parameters())


def reference_llama_count(config: dict[str, Any]) -> int:
    """Parameters of ``LlamaForCausalLM(LlamaConfig(**config))``, built on the meta device (no memory)."""
    return _meta_count(tuple(sorted(config.items())))


def _formula(config: dict[str, Any], *, untied: bool | None = None, kv_heads: int | None = None,
             mlp_matrices: int = 3, norm_size: int = 1, block_norms: bool = True, final_norm: bool = True,
             biases: bool = False) -> int:
    """The parameter count with one piece changeable, to compute the usual mistakes."""
    v, d, inner = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config["num_key_value_heads"] if kv_heads is None else kv_heads
    hd = config.get("head_dim") or d // heads
    tied = config["tie_word_embeddings"] if untied is None else not untied
    attention = d * heads * hd + 2 * d * kv * hd + heads * hd * d
    if biases:
        attention += heads * hd + 2 * kv * hd + d
    mlp = mlp_matrices * d * inner
    norms = 2 * norm_size * d if block_norms else 0
    block = attention + mlp + norms
    head = 0 if tied else v * d
    return v * d + head + config["num_hidden_layers"] * block + (norm_size * d if final_norm else 0)


def _llama_mistakes(config: dict[str, Any]) -> list[tuple[float, str]]:
    tied = config["tie_word_embeddings"]
    candidates = [
        (dict(untied=False), "This model does not tie its output layer to the token embedding "
                             "(tie_word_embeddings is false): lm_head is a second vocab_size x "
                             "hidden_size matrix."),
        (dict(untied=True), "This config ties the output layer to the embedding "
                            "(tie_word_embeddings is true): count that matrix once."),
        (dict(kv_heads=config["num_attention_heads"]),
         "Grouped-query attention: k_proj and v_proj have num_key_value_heads x head_dim outputs, "
         "not num_attention_heads x head_dim. Only q_proj and o_proj are hidden_size x hidden_size."),
        (dict(mlp_matrices=2), "SwiGLU has three matrices: gate_proj and up_proj (hidden -> "
                               "intermediate) and down_proj (intermediate -> hidden)."),
        (dict(block_norms=False, final_norm=False), "You forgot the RMSNorms: two per layer "
                                                    "(input and post-attention) and one at the end, "
                                                    "each hidden_size weights."),
        (dict(block_norms=False), "You forgot the two RMSNorms in every layer (input_layernorm and "
                                  "post_attention_layernorm)."),
        (dict(final_norm=False), "You forgot the final norm (model.norm) after the last layer."),
        (dict(norm_size=2), "RMSNorm has a weight but no bias: hidden_size parameters, not 2 x hidden_size."),
        (dict(biases=True), "Llama's linear layers have no biases (attention_bias is false)."),
    ]
    correct = _formula(config)
    out: list[tuple[float, str]] = []
    for overrides, hint in candidates:
        if overrides.get("untied") is True and not tied:
            continue
        value = _formula(config, **overrides)
        if value != correct and all(value != v for v, _ in out):
            out.append((value, hint))
    return out


def _llama_cases() -> list[tuple[str, dict[str, Any]]]:
    rows = {row["model"]: row for row in _rows("model_configs.csv")}
    return [
        ("Llama 3 8B (data/model_configs.csv)", llama_config(rows["Llama 3 8B"])),
        ("Mistral 7B (data/model_configs.csv)", llama_config(rows["Mistral 7B"])),
        ("a small tied config with 2 key-value heads",
         {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 200, "num_hidden_layers": 3,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True}),
    ]


def check_count_llama_parameters(count_llama_parameters: Callable[[dict[str, Any]], int]) -> None:
    """Check ``count_llama_parameters(config) -> int`` on Llama 3 8B, Mistral 7B and a small config.

    The reference is the model ``transformers`` builds from the same config on the meta device;
    the check also confirms that it equals the total in data/model_configs.csv.
    """
    rows = {row["model"]: row for row in _rows("model_configs.csv")}
    results = []
    for label, config in _llama_cases():
        expected = reference_llama_count(config)
        for model, row in rows.items():
            if label.startswith(model) and int(row["total_parameters"]) != expected:
                raise RuntimeError(f"data/model_configs.csv says {model} has {row['total_parameters']} "
                                   f"parameters; transformers builds {expected:,}")
        got = call_learner(count_llama_parameters, dict(config), name="count_llama_parameters",
                           hints={KeyError: "Use the config's keys: " + ", ".join(config) + "."})
        check_number(got, expected, f"count_llama_parameters for {label}",
                     known_mistakes=_llama_mistakes(config), integer=True,
                     hint="Embedding, then per layer: q, k, v, o projections, gate, up, down, two "
                          "norms; then the final norm and, if untied, lm_head.")
        results.append(int(got))
    passed(f"count_llama_parameters: {results[0]:,} for Llama 3 8B and {results[1]:,} for Mistral 7B "
           "(the totals transformers builds from their configs), and right for a small tied config.")


# --------------------------------------------------------------------------- exercise 4

def _reference_allows(row: dict[str, str], users: int, train_other_model: bool) -> bool:
    if row["weights_released"] != "yes" or row["commercial_use"] != "yes":
        return False
    cap = row["user_cap_monthly_active_users"].strip()
    if cap and users > int(cap):
        return False
    return not train_other_model or row["outputs_to_train_other_models"] == "allowed"


def check_licence_allows(licence_allows: Callable[[dict[str, str], int, bool], bool]) -> None:
    """Check ``licence_allows(row, monthly_active_users, train_other_model) -> bool``.

    Every row of data/licences.csv meets five situations: a small start-up, a company of
    exactly 700 million monthly users and one just above, a giant, and a start-up that
    wants to train its own model on the outputs.
    """
    situations = [(50_000, False, "a start-up with 50,000 monthly users"),
                  (700_000_000, False, "a company with exactly 700,000,000 monthly users"),
                  (700_000_001, False, "a company with 700,000,001 monthly users"),
                  (3_000_000_000, False, "a company with 3 billion monthly users"),
                  (50_000, True, "a start-up that trains its own model on the outputs")]
    rows = _rows("licences.csv")
    for row in rows:
        for users, train, who in situations:
            expected = _reference_allows(row, users, train)
            got = call_learner(licence_allows, dict(row), users, train, name="licence_allows",
                               hints={ValueError: "An empty user cap means no cap: only convert it "
                                                  "with int() when it holds digits.",
                                      KeyError: "The row's columns are: " + ", ".join(row) + "."})
            if got == "":
                fail("licence_allows returned '' (an empty string); expected True or False.",
                     "An `a and b` expression returns `a` itself when `a` is falsy, here an empty "
                     "user cap: wrap the test in bool(...) or write it with if/else.")
            if isinstance(got, str):
                fail(f"licence_allows returned the text {got!r}; expected True or False.",
                     "Return a bool: True if the licence allows it, False otherwise.")
            check_type(got, bool, f"licence_allows for {row['model']}, {who}",
                       hint="Return True or False.")
            if got == expected:
                continue
            cap = row["user_cap_monthly_active_users"].strip()
            case = f"{row['model']} ({row['licence']}), {who}: expected {expected}, got {got}."
            if row["weights_released"] != "yes":
                fail(case, "No weights were released, so there is nothing to licence or to run "
                           "yourself: the answer is always False.")
            if "unknown" in (row["commercial_use"], row["outputs_to_train_other_models"]) and got:
                fail(case, "'unknown' is not 'yes': when the terms are not established, the safe "
                           "answer is False until you have read them.")
            if cap.isdigit() and users == int(cap) and not got:
                fail(case, "The clause applies above the cap: exactly 700,000,000 users is still "
                           "allowed; 700,000,001 is not (use >, not >=).")
            if cap.isdigit() and users > int(cap) and got:
                fail(case, f"This licence needs a separate licence above {int(cap):,} monthly "
                           "active users.")
            if train and row["outputs_to_train_other_models"] != "allowed" and got:
                fail(case, "This licence forbids using the outputs to improve other language models.")
            fail(case, "Check, in order: weights released, commercial use 'yes', the user cap "
                       "(if any), and the outputs clause when train_other_model is true.")
    passed(f"licence_allows: right for all {len(rows)} licences in {len(situations)} situations each.")
