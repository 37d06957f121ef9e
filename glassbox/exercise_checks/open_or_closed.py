"""Checks for chapter 01, "Open, open weights, or closed?".

References come from the check's own reading of the OSI Open Source AI Definition 1.0 and from
``data/`` (the openness tables' sums, the dated prices of api_prices.csv, the licence terms of
licences.csv, where "unknown" is its own answer). Each usual mistake is the reference with one
step changed ("partial" as 0, a price per thousand tokens, today's users in the 700 million test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from glassbox.exercise_checks.feedback import (
    call_learner, check_number, check_type, data_rows, fail, mistakes_from, passed)

__all__ = ["ANSWERS", "LABELS", "MAU_COLUMN", "check_api_cost", "check_classify_release",
           "check_licence_answer", "check_openness_score", "reference_api_cost",
           "reference_classification", "reference_licence_answer"]

LABELS = ("open source", "open weights", "open access", "closed")
"""The four answers of exercise 1."""

ANSWERS = ("yes", "no", "unknown")
"""The three answers of exercise 4: a licence question whose terms are not established is "unknown"."""

MAU_COLUMN = "separate_licence_if_mau_at_release_above"
"""data/licences.csv's column for Llama's 700 million clause: a test made once, on the release date."""


# --------------------------------------------------------------------------- exercise 1

def reference_classification(release: dict[str, bool]) -> str:
    """Classify a release by its artefacts, following the OSI Open Source AI Definition 1.0."""
    if release["weights"] and release["training_code"] and release["data_information"] \
            and release["osi_licence"]:
        return "open source"
    if release["weights"]:
        return "open weights"
    if release["api"]:
        return "open access"
    return "closed"


def _release(weights: bool, code: bool, data: bool, osi: bool, api: bool) -> dict[str, bool]:
    return {"weights": weights, "training_code": code, "data_information": data, "osi_licence": osi, "api": api}


def _release_cases() -> list[tuple[str, dict[str, bool]]]:
    """Releases to classify: real ones (weights and OSI terms from data/licences.csv; code and data
    from the "opencode" and "llmdata" columns of "Opening up ChatGPT"), then made-up ones."""
    licences = {row["model"]: row for row in data_rows("licences.csv")}
    real = [  # (label, model in licences.csv, training code, data information, API)
        ("TinyGPT (corpus generator, training code, weights, MIT)", "TinyGPT", True, True, False),
        ("GPT-2 (weights and inference code, MIT; WebText never released)", "GPT-2", False, False, False),
        ("Llama 3 (weights under Meta's community licence; no data, no training code)", "Llama 3", False, False, True),
        ("Mistral 7B (weights under Apache-2.0; no data)", "Mistral 7B", False, False, True),
        ("OLMo (weights, training code and the Dolma data, Apache-2.0)", "OLMo", True, True, True),
        ("ChatGPT (an app and an API, nothing else)", "GPT-4 / ChatGPT", False, False, True)]
    made_up = [  # (label, weights, training code, data information, OSI terms, API)
        ("weights, training code and data under a licence that restricts uses (not OSI-approved)",
         True, True, True, False, False),
        ("a model used inside a company and never offered to anyone", False, False, False, False, False),
        ("training code and data published, but not the weights; an API serves the model",
         False, True, True, True, True),
        # Training code and data information must each decide the answer on their own.
        ("weights and the complete training code under Apache-2.0, but no data information",
         True, True, False, True, False),
        ("weights and full data information under Apache-2.0, but no training code", True, False, True, True, True),
        ("training code and data published, but neither the weights nor any API", False, True, True, True, False)]
    return [(label, _release(licences[model]["weights_released"] == "yes", code, data,
                             licences[model]["osi_approved"] == "yes", api))
            for label, model, code, data, api in real] + \
        [(label, _release(*flags)) for label, *flags in made_up]


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
    cases, answers = _release_cases(), ", ".join(repr(x) for x in LABELS)
    for label, release in cases:
        expected = reference_classification(release)
        got = call_learner(classify_release, dict(release), name="classify_release",
                           hints={KeyError: "The dict's keys are: " + ", ".join(release) + "."})
        check_type(got, str, f"classify_release for {label}", hint=f"Return one of: {answers}.")
        near = got.strip().lower().replace("-", " ").replace("_", " ")
        if got not in LABELS and near in LABELS:
            fail(f"For {label} you returned {got!r}; write it exactly as {near!r}.",
                 f"The four answers are: {answers}.")
        if got not in LABELS and "free" in near:
            fail(f"For {label} you returned {got!r}.",
                 "Free of charge says nothing about openness: a free app can be closed and an "
                 f"open model can cost money to run. Answer with one of {answers}.")
        if got not in LABELS:
            fail(f"For {label} you returned {got!r}, which is not one of the four answers.",
                 f"Return one of: {answers}.")
        if got != expected:
            fail(f"{label}: expected {expected!r}, got {got!r}.", _classification_hint(release, got, expected))
    passed(f"classify_release: all {len(cases)} releases classified as this course's reading of the "
           "OSI definition does (parameters, training code and data information, each checked on "
           "its own, under OSI-approved terms), from TinyGPT (open source) to ChatGPT (open access).")


# --------------------------------------------------------------------------- exercise 2

_SCORES = {"open": 1.0, "partial": 0.5, "closed": 0.0}
#: The two openness tables: (file in data/, its published sum column, its name column).
OPENNESS_TABLES = [("openness_opening_up_chatgpt.csv", "openness_sum_of_14", "llmbase"),
                   ("openness_osai_index.csv", "sum_of_12", "name")]


def _dimensions(rows: list[dict[str, str]]) -> list[str]:
    """The scored columns of an openness table (tests check its sums follow ``_SCORES``)."""
    return [c for c in rows[0] if all(r[c] in _SCORES for r in rows)]


def check_openness_score(openness_score: Callable[[dict[str, str], list[str]], float]) -> None:
    """Check ``openness_score(row, dimensions) -> float`` against the published sums."""
    n_rows = 0
    for name, sum_column, name_column in OPENNESS_TABLES:
        rows = data_rows(name)
        dimensions = _dimensions(rows)
        for row in rows:
            expected = float(row[sum_column])
            counts = {value: sum(row[d] == value for d in dimensions) for value in _SCORES}
            mistakes = [
                (counts["open"], "You gave 'partial' 0 points: it counts half (0.5)."),
                (counts["open"] + counts["partial"], "You gave 'partial' a full point: it counts half (0.5)."),
                (counts["closed"] + 0.5 * counts["partial"], "You counted 'closed' as open: 'open' is 1, 'closed' is 0."),
                (expected / len(dimensions), "That is the average; the score asked for is the sum."),
                (100 * expected / len(dimensions), "That is a percentage; the score asked for is the sum of the points."),
            ]
            given = {k: v for k, v in row.items() if k not in (sum_column, "pct")}  # no totals
            got = call_learner(openness_score, given, list(dimensions), name="openness_score",
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

PER = 1_000_000
"""data/api_prices.csv gives US dollars per million tokens."""


def reference_api_cost(row: dict[str, str], input_tokens: int, output_tokens: int, *,
                       input_price: str = "usd_per_1m_input",
                       output_price: str = "usd_per_1m_output", per: float = PER) -> float:
    """US dollars for ``input_tokens`` in and ``output_tokens`` out at one row of api_prices.csv."""
    return (input_tokens * float(row[input_price]) + output_tokens * float(row[output_price])) / per


def _cost_settings(row: dict[str, str]) -> list[tuple[dict[str, Any], str]]:
    """The usual ways of mispricing a workload: (reference_api_cost's settings, hint)."""
    settings: list[tuple[dict[str, Any], str]] = [
        (dict(input_price="usd_per_1m_output", output_price="usd_per_1m_input"),
         "You swapped the prices: input tokens cost usd_per_1m_input, output tokens usd_per_1m_output."),
        (dict(input_tokens=0), "You priced only the output tokens: the prompt (input) is paid for too."),
        (dict(output_tokens=0), "You priced only the input tokens: the generated (output) tokens cost more."),
        (dict(output_price="usd_per_1m_input"), "You priced every token at the input price; output "
                                                "tokens have their own price."),
        (dict(input_price="usd_per_1m_output"), "You priced every token at the output price; input tokens are cheaper."),
        (dict(per=1_000), "The prices are per million tokens (usd_per_1m_...), not per thousand: divide by 1,000,000."),
        (dict(per=1), "The prices are per million tokens: divide tokens x price by 1,000,000."),
    ]
    if row.get("usd_per_1m_cached_input"):
        settings.append((dict(input_price="usd_per_1m_cached_input"),
                         "usd_per_1m_cached_input is the discount for a prompt the provider has "
                         "cached; an ordinary request pays usd_per_1m_input."))
    return settings


def check_api_cost(api_cost: Callable[[dict[str, str], int, int], float]) -> None:
    """Check ``api_cost(row, input_tokens, output_tokens) -> float`` (US dollars) on every price."""
    rows = data_rows("api_prices.csv")
    workloads = [(1_000, 200, "a 1,000-token prompt with a 200-token answer"),
                 (30 * 500 * 1_200, 30 * 500 * 300, "a month of 500 chats a day (1,200 tokens in, 300 out each)"),
                 (0, 1, "a single output token")]
    for row in rows:
        for n_in, n_out, what in workloads:
            expected = reference_api_cost(row, n_in, n_out)
            got = call_learner(api_cost, dict(row), n_in, n_out, name="api_cost",
                               hints={KeyError: "The row's columns are: " + ", ".join(row) + ".",
                                      TypeError: "The prices in the row are text: convert them with float()."})
            check_number(got, expected, f"api_cost for {row['model']} ({row['as_of']}), {what}",
                         known_mistakes=mistakes_from(lambda **s: reference_api_cost(
                             row, **{"input_tokens": n_in, "output_tokens": n_out, **s}),
                             _cost_settings(row)), rel_tol=1e-9, abs_tol=1e-12,
                         hint="Cost = (input tokens x usd_per_1m_input + output tokens x "
                              "usd_per_1m_output) / 1,000,000.")
    passed(f"api_cost: right for all {len(rows)} dated prices of data/api_prices.csv and "
           f"{len(workloads)} workloads each.")


# --------------------------------------------------------------------------- exercise 4

_COMMERCIAL = {"yes": "yes", "no": "no"}
_OUTPUTS = {"allowed": "yes", "allowed with conditions": "yes", "forbidden": "no"}


def reference_licence_answer(row: dict[str, str], users_at_release: int, users_now: int,
                             train_other_model: bool) -> str:
    """'yes', 'no' or 'unknown': may this company use the weights commercially (and train on outputs)?"""
    if row["weights_released"] != "yes":
        return "no"
    threshold = row[MAU_COLUMN].strip()
    if threshold.isdigit() and users_at_release > int(threshold):
        return "no"
    answers = [_COMMERCIAL.get(row["commercial_use"], "unknown")]
    if train_other_model:
        answers.append(_OUTPUTS.get(row["outputs_to_train_other_models"], "unknown"))
    if "no" in answers:
        return "no"
    return "unknown" if "unknown" in answers else "yes"


SITUATIONS = [
    (50_000, 50_000, False, "a start-up with 50,000 monthly users"),
    (700_000_000, 700_000_000, False, "a company with exactly 700,000,000 monthly users at the release"),
    (700_000_001, 700_000_001, False, "a company with 700,000,001 monthly users at the release"),
    (50_000, 2_000_000_000, False, "a start-up with 50,000 users at the release that has 2 billion today"),
    (3_000_000_000, 3_000_000_000, False, "a company with 3 billion monthly users at the release"),
    (50_000, 50_000, True, "a start-up that trains its own model on the outputs"),
]
"""(users in the month before the release, users today, train on outputs?, who)."""


def _made_up_licences(columns: list[str]) -> list[dict[str, str]]:
    """Licences that no real row is, where one column alone decides the answer."""
    def row(name: str, weights: str, commercial: str, outputs: str, threshold: str = "") -> dict[str, str]:
        made = {column: "" for column in columns}
        made.update({"model": name, "licence": "made up for this check", "osi_approved": "no",
                     "weights_released": weights, "commercial_use": commercial,
                     "outputs_to_train_other_models": outputs, MAU_COLUMN: threshold})
        return made

    return [
        row("made-up A (commercial use unknown, outputs allowed)", "yes", "unknown", "allowed"),
        row("made-up B (commercial use allowed, outputs clause unknown)", "yes", "yes", "unknown"),
        row("made-up C (no commercial use, outputs allowed)", "yes", "no", "allowed"),
        row("made-up D (no commercial use, with a 700 million clause)", "yes", "no",
            "allowed with conditions", "700000000"),
        row("made-up E (commercial terms, but no weights released)", "no", "yes", "allowed"),
    ]


def check_licence_answer(licence_answer: Callable[[dict[str, str], int, int, bool], str]) -> None:
    """Check ``licence_answer(row, users_at_release, users_now, train_other_model) -> str``."""
    rows = data_rows("licences.csv")
    rows += _made_up_licences(list(rows[0]))
    for row in rows:
        for at_release, now, train, who in SITUATIONS:
            expected = reference_licence_answer(row, at_release, now, train)
            got = call_learner(licence_answer, dict(row), at_release, now, train, name="licence_answer",
                               hints={ValueError: "An empty threshold means no such clause: only convert "
                                                  "it with int() when it holds digits.",
                                      KeyError: "The row's columns are: " + ", ".join(row) + "."})
            if isinstance(got, bool):
                fail(f"licence_answer returned {got} for {row['model']}, {who}; expected 'yes', 'no' "
                     "or 'unknown'.", "A bool cannot say 'unknown'. When the terms are not established, the honest "
                     "answer is its own value: return 'yes', 'no' or 'unknown'.")
            check_type(got, str, f"licence_answer for {row['model']}, {who}", hint="Return 'yes', 'no' or 'unknown'.")
            if got not in ANSWERS:
                fail(f"licence_answer returned {got!r} for {row['model']}, {who}.",
                     "Return exactly one of 'yes', 'no' or 'unknown' (lower case).")
            if got == expected:
                continue
            threshold = row[MAU_COLUMN].strip()
            limit = int(threshold) if threshold.isdigit() else None
            outputs = row["outputs_to_train_other_models"] if train else None
            hints = [  # (does it apply, hint), the first that applies is given
                (expected == "unknown",
                 f"The row does not establish this (commercial_use {row['commercial_use']!r}, outputs "
                 f"{row['outputs_to_train_other_models']!r}). 'unknown' is not 'no' and not 'yes': it "
                 "is its own answer, until someone reads the terms."),
                (row["weights_released"] != "yes", "No weights were released, so there is nothing to "
                 "licence or to run yourself: the answer is 'no'."),
                (limit is not None and at_release <= limit < now and got == "no",
                 "The 700 million clause is a test made once: the monthly active users in the month "
                 "before the licence's release date. A service that grows later is not caught by it: "
                 "use users_at_release, not users_now."),
                (limit is not None and at_release == limit and got == "no",
                 "The clause applies above the threshold: exactly 700,000,000 users is still under "
                 "it; 700,000,001 is not (use >, not >=)."),
                (limit is not None and at_release > limit and got != "no",
                 "This licence needs a separate licence from Meta when the users in the month before "
                 f"the release exceeded {limit or 0:,}."),
                (row["commercial_use"] == "no" and got != "no", "This licence does not allow "
                 "commercial use, whatever its other terms say: the answer is 'no'."),
                (outputs == "forbidden" and got != "no", "This licence forbids using the outputs to "
                 "improve other language models (Llama 2 and Llama 3; Llama 3.1 dropped that ban)."),
                (outputs == "allowed with conditions" and got == "no", "'allowed with conditions' is "
                 "allowed: Llama 3.1 asks for attribution ('Llama' at the start of the new model's "
                 "name), Gemma passes its terms on to the new model."),
            ]
            fail(f"{row['model']} ({row['licence']}), {who}: expected {expected!r}, got {got!r}.",
                 next((hint for applies, hint in hints if applies),
                      "Check, in order: weights released, the release-date users test (if any), commercial use, and the "
                      "outputs clause when train_other_model is true; any 'no' wins, then any 'unknown'."))
    n_made = len(_made_up_licences(list(rows[0])))
    passed(f"licence_answer: right for all {len(rows)} licences ({len(rows) - n_made} from data/licences.csv, "
           f"{n_made} made up to separate its columns) in {len(SITUATIONS)} situations each; unknown stays "
           "unknown.")
