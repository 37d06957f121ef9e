"""Chapter 01's checks: right answers pass, plausible wrong answers fail with their hint.

Each test calls a check function directly with a deliberately wrong answer and asserts on
the message the learner would see. The references themselves are tested too: the
classification rule against the definition's components, the openness sums against the
tables, and the Llama count against data/model_configs.csv.
"""

from __future__ import annotations

import csv

import pytest

from glassbox.exercise_checks.feedback import ExerciseFailed
from glassbox.exercise_checks.open_or_closed import (
    LABELS,
    check_classify_release,
    check_count_llama_parameters,
    check_licence_allows,
    check_openness_score,
    llama_config,
    reference_llama_count,
)
from glassbox.paths import DATA_DIR


def fails_with(check, answer, match: str) -> str:
    with pytest.raises(ExerciseFailed) as info:
        check(answer)
    message = str(info.value)
    assert match.lower() in message.lower(), message
    return message


def passes(check, answer, capsys) -> str:
    check(answer)
    out = capsys.readouterr().out
    assert out.startswith("✓") and out.count("\n") == 1, out
    return out


# ----------------------------------------------------------------- classify_release

def classify_ok(r):
    if r["weights"] and r["training_code"] and r["data_information"] and r["osi_licence"]:
        return "open source"
    if r["weights"]:
        return "open weights"
    return "open access" if r["api"] else "closed"


def test_classify_accepts_right_answer(capsys) -> None:
    passes(check_classify_release, classify_ok, capsys)


@pytest.mark.parametrize("wrong, hint", [
    (lambda r: "open source" if r["weights"] and r["osi_licence"] else classify_ok(r), "training code"),
    (lambda r: "open source" if r["weights"] and r["training_code"] and r["data_information"]
     else classify_ok(r), "osi-approved terms"),
    (lambda r: "closed" if not r["weights"] else classify_ok(r), "open access"),
    (lambda r: "open weights" if r["api"] else classify_ok(r), "weights"),
    (lambda r: "open access" if not r["weights"] else classify_ok(r), "offered to no one"),
    (lambda r: classify_ok(r).title(), "write it exactly"),
    (lambda r: classify_ok(r).replace(" ", "-"), "write it exactly"),
    (lambda r: "free of charge", "free of charge says nothing"),
    (lambda r: "open", "not one of the four answers"),
    (lambda r: None, "return"),
    (lambda r: r["licence"], "keys are"),
])
def test_classify_known_mistakes(wrong, hint) -> None:
    fails_with(check_classify_release, wrong, hint)


def test_classify_labels_are_the_four_words() -> None:
    assert LABELS == ("open source", "open weights", "open access", "closed")


# ----------------------------------------------------------------- openness_score

def score_ok(row, dimensions):
    points = {"open": 1, "partial": 0.5, "closed": 0}
    return sum(points[row[d]] for d in dimensions)


def test_openness_accepts_right_answer(capsys) -> None:
    out = passes(check_openness_score, score_ok, capsys)
    n_rows = sum(1 for name in ("openness_opening_up_chatgpt.csv", "openness_osai_index.csv")
                 for _ in csv.DictReader((DATA_DIR / name).open()))
    assert f"all {n_rows} rows" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda row, dims: sum(row[d] == "open" for d in dims), "counts half"),
    (lambda row, dims: sum(row[d] != "closed" for d in dims), "full point"),
    (lambda row, dims: sum({"open": 0, "partial": 0.5, "closed": 1}[row[d]] for d in dims), "counted 'closed'"),
    (lambda row, dims: score_ok(row, dims) / len(dims), "average"),
    (lambda row, dims: 100 * score_ok(row, dims) / len(dims), "percentage"),
    (lambda row, dims: sum({"open": 1, "partial": 0.5, "closed": 0}[v] for v in row.values()), "columns named"),
    (lambda row, dims: sum(float(row[d]) for d in dims), "words"),
    (lambda row, dims: str(score_ok(row, dims)), "should be a number"),
    (lambda row, dims: None, "return"),
])
def test_openness_known_mistakes(wrong, hint) -> None:
    fails_with(check_openness_score, wrong, hint)


# ----------------------------------------------------------------- count_llama_parameters

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
    out = passes(check_count_llama_parameters, llama_ok, capsys)
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
    fails_with(check_count_llama_parameters, wrong, hint)


def test_llama_tied_config_counted_twice() -> None:
    def head_always(c):
        return llama_ok(without(c, tie_word_embeddings=False))
    fails_with(check_count_llama_parameters, head_always, "count that matrix once")


# ----------------------------------------------------------------- licence_allows

def allows_ok(row, users, train_other_model):
    if row["weights_released"] != "yes" or row["commercial_use"] != "yes":
        return False
    cap = row["user_cap_monthly_active_users"]
    if cap and users > int(cap):
        return False
    return not train_other_model or row["outputs_to_train_other_models"] == "allowed"


def test_licence_accepts_right_answer(capsys) -> None:
    passes(check_licence_allows, allows_ok, capsys)


@pytest.mark.parametrize("wrong, hint", [
    (lambda row, u, t: allows_ok({**row, "user_cap_monthly_active_users": ""}, u, t), "separate licence above"),
    (lambda row, u, t: allows_ok(row, u + 1, t), ">="),
    (lambda row, u, t: allows_ok(row, u, False), "forbids using the outputs"),
    (lambda row, u, t: allows_ok({**row, "commercial_use": "yes", "outputs_to_train_other_models": "allowed"}
                                 if row["commercial_use"] == "unknown" else row, u, t), "'unknown' is not 'yes'"),
    (lambda row, u, t: True if row["weights_released"] == "no" else allows_ok(row, u, t), "no weights"),
    (lambda row, u, t: "yes" if allows_ok(row, u, t) else "no", "true or false"),
    (lambda row, u, t: int(allows_ok(row, u, t)), "should be a bool"),
    (lambda row, u, t: row["user_cap_monthly_active_users"] and u > int(row["user_cap_monthly_active_users"]),
     "empty string"),
])
def test_licence_known_mistakes(wrong, hint) -> None:
    fails_with(check_licence_allows, wrong, hint)


def test_licence_empty_cap_int_crash_gets_hint() -> None:
    def crashes(row, users, train):
        return users <= int(row["user_cap_monthly_active_users"])
    fails_with(check_licence_allows, crashes, "empty user cap means no cap")
