"""Chapter 01's checks: right answers pass, plausible wrong answers fail with their hint.

Each test calls a check function directly with a deliberately wrong answer and asserts on
the message the learner would see. The references themselves are tested too: the
classification rule against the definition's components, the openness sums against the
tables, the cost against hand-worked prices, and the licence answers against the licence
texts' terms as data/licences.csv records them (the 700 million test made once, on the release
date; unknown kept apart from no).
"""

from __future__ import annotations

import csv

import pytest

from glassbox.exercise_checks.open_or_closed import (
    ANSWERS,
    LABELS,
    MAU_COLUMN,
    check_api_cost,
    check_classify_release,
    check_licence_answer,
    check_openness_score,
    reference_api_cost,
    reference_licence_answer,
)
from glassbox.paths import DATA_DIR
from checks.conftest import fails_with, passes


# ----------------------------------------------------------------- classify_release

def classify_ok(r):
    if r["weights"] and r["training_code"] and r["data_information"] and r["osi_licence"]:
        return "open source"
    if r["weights"]:
        return "open weights"
    return "open access" if r["api"] else "closed"


def test_classify_accepts_right_answer(capsys) -> None:
    passes(check_classify_release, classify_ok, capsys=capsys)


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
    fails_with(check_classify_release, wrong, match=hint)


def test_classify_labels_are_the_four_words() -> None:
    assert LABELS == ("open source", "open weights", "open access", "closed")


# ----------------------------------------------------------------- openness_score

def score_ok(row, dimensions):
    points = {"open": 1, "partial": 0.5, "closed": 0}
    return sum(points[row[d]] for d in dimensions)


def test_openness_accepts_right_answer(capsys) -> None:
    out = passes(check_openness_score, score_ok, capsys=capsys)
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
    fails_with(check_openness_score, wrong, match=hint)


# ----------------------------------------------------------------- api_cost

def cost_ok(row, n_in, n_out):
    return (n_in * float(row["usd_per_1m_input"]) + n_out * float(row["usd_per_1m_output"])) / 1_000_000


def test_reference_cost_by_hand() -> None:
    row = {"usd_per_1m_input": "0.15", "usd_per_1m_output": "0.60"}
    # 1,000,000 tokens in at $0.15 and 500,000 out at $0.60 per million: 0.15 + 0.30
    assert reference_api_cost(row, 1_000_000, 500_000) == pytest.approx(0.45)


def test_cost_accepts_right_answer(capsys) -> None:
    out = passes(check_api_cost, cost_ok, capsys=capsys)
    n_rows = sum(1 for _ in csv.DictReader((DATA_DIR / "api_prices.csv").open()))
    assert f"all {n_rows} dated prices" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda row, i, o: cost_ok({**row, "usd_per_1m_input": row["usd_per_1m_output"],
                                "usd_per_1m_output": row["usd_per_1m_input"]}, i, o), "swapped the prices"),
    (lambda row, i, o: cost_ok(row, 0, o), "only the output"),
    (lambda row, i, o: cost_ok(row, i, 0), "only the input"),
    (lambda row, i, o: cost_ok(row, i, o) * 1000, "not per thousand"),
    (lambda row, i, o: cost_ok({**row, "usd_per_1m_input": row["usd_per_1m_cached_input"] or row["usd_per_1m_input"]},
                               i, o), "cached"),
    (lambda row, i, o: row["usd_per_1m_input"], "should be a number"),
    (lambda row, i, o: None, "return"),
])
def test_cost_known_mistakes(wrong, hint) -> None:
    fails_with(check_api_cost, wrong, match=hint)


# ----------------------------------------------------------------- licence_answer

def answer_ok(row, at_release, now, train):
    if row["weights_released"] != "yes":
        return "no"
    threshold = row[MAU_COLUMN]
    if threshold.isdigit() and at_release > int(threshold):
        return "no"
    answers = [{"yes": "yes", "no": "no"}.get(row["commercial_use"], "unknown")]
    if train:
        answers.append({"allowed": "yes", "allowed with conditions": "yes",
                        "forbidden": "no"}.get(row["outputs_to_train_other_models"], "unknown"))
    return "no" if "no" in answers else "unknown" if "unknown" in answers else "yes"


def licences() -> dict[str, dict[str, str]]:
    return {row["model"]: row for row in csv.DictReader((DATA_DIR / "licences.csv").open())}


def test_the_700m_clause_is_recorded_as_a_release_date_test() -> None:
    rows = licences()
    assert "user_cap_monthly_active_users" not in next(iter(rows.values())), "the old 'user cap' column is back"
    for model in ("Llama 2", "Llama 3", "Llama 3.1"):
        row = rows[model]
        assert row[MAU_COLUMN] == "700000000", row
        assert "release date" in row["source"] and "preceding calendar month" in row["source"], row["source"]
        assert "cap" not in row["source"].lower(), row["source"]


def test_llama_versions_differ_on_training_other_models() -> None:
    rows = licences()
    assert rows["Llama 2"]["outputs_to_train_other_models"] == "forbidden"
    assert rows["Llama 3"]["outputs_to_train_other_models"] == "forbidden"
    assert rows["Llama 3.1"]["outputs_to_train_other_models"] == "allowed with conditions"
    assert "attribution" in rows["Llama 3.1"]["source"]


def test_gemma_allows_commercial_use_and_bloomz_is_not_osi() -> None:
    rows = licences()
    assert rows["Gemma"]["commercial_use"] == "yes" and "Prohibited Use Policy" in rows["Gemma"]["source"]
    assert rows["BLOOMZ"]["osi_approved"] == "no" and "RAIL" in rows["BLOOMZ"]["licence"]


def test_reference_keeps_unknown_apart_from_no() -> None:
    rows = licences()
    assert reference_licence_answer(rows["BLOOMZ"], 50_000, 50_000, False) == "unknown"
    assert reference_licence_answer(rows["Gemma"], 50_000, 50_000, False) == "yes"
    unknown_but_forbidden = {**rows["Llama 3"], "commercial_use": "unknown"}
    assert reference_licence_answer(unknown_but_forbidden, 50_000, 50_000, True) == "no", "a 'no' wins over unknown"


def test_reference_700m_is_tested_once_at_release() -> None:
    llama3 = licences()["Llama 3"]
    assert reference_licence_answer(llama3, 50_000, 2_000_000_000, False) == "yes"
    assert reference_licence_answer(llama3, 700_000_000, 700_000_000, False) == "yes"
    assert reference_licence_answer(llama3, 700_000_001, 1, False) == "no"


def test_licence_accepts_right_answer(capsys) -> None:
    out = passes(check_licence_answer, answer_ok, capsys=capsys)
    assert "unknown stays unknown" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda row, r, n, t: "no" if answer_ok(row, r, n, t) == "unknown" else answer_ok(row, r, n, t), "'unknown' is not 'no'"),
    (lambda row, r, n, t: "yes" if answer_ok(row, r, n, t) == "unknown" else answer_ok(row, r, n, t), "'unknown' is not 'no' and not 'yes'"),
    (lambda row, r, n, t: answer_ok(row, n, n, t), "test made once"),
    (lambda row, r, n, t: answer_ok({**row, MAU_COLUMN: ""}, r, n, t), "separate licence from meta"),
    (lambda row, r, n, t: answer_ok(row, r + 1, n, t), ">="),
    (lambda row, r, n, t: answer_ok(row, r, n, False), "forbids using the outputs"),
    (lambda row, r, n, t: answer_ok({**row, "outputs_to_train_other_models": "forbidden"}
                                    if row["outputs_to_train_other_models"] == "allowed with conditions" else row,
                                    r, n, t), "'allowed with conditions' is allowed"),
    (lambda row, r, n, t: "yes" if row["weights_released"] == "no" else answer_ok(row, r, n, t), "no weights"),
    (lambda row, r, n, t: answer_ok(row, r, n, t) == "yes", "a bool cannot say 'unknown'"),
    (lambda row, r, n, t: answer_ok(row, r, n, t).upper(), "exactly one of"),
    (lambda row, r, n, t: None, "return"),
])
def test_licence_known_mistakes(wrong, hint) -> None:
    fails_with(check_licence_answer, wrong, match=hint)


def test_licence_empty_threshold_int_crash_gets_hint() -> None:
    def crashes(row, at_release, now, train):
        return "no" if at_release > int(row[MAU_COLUMN]) else "yes"
    fails_with(check_licence_answer, crashes, match="empty threshold means no such clause")


def test_answers_are_three() -> None:
    assert ANSWERS == ("yes", "no", "unknown")


# ----------------------------------------------------------------- issue 16: cases where one input alone decides

def test_classify_training_code_without_data_is_not_open_source() -> None:
    def code_is_enough(r):
        if r["weights"] and r["training_code"] and r["osi_licence"]:
            return "open source"
        return classify_ok(r)

    fails_with(check_classify_release, code_is_enough, match="no data information")


def test_classify_data_without_training_code_is_not_open_source() -> None:
    def data_is_enough(r):
        if r["weights"] and r["data_information"] and r["osi_licence"]:
            return "open source"
        return classify_ok(r)

    fails_with(check_classify_release, data_is_enough, match="but no training code")


def test_classify_published_code_without_api_is_not_open_access() -> None:
    def code_is_access(r):
        if not r["weights"] and (r["api"] or r["training_code"]):
            return "open access"
        return classify_ok(r)

    fails_with(check_classify_release, code_is_access, match="offered to no one")


def test_openness_cannot_copy_the_published_sum() -> None:
    def copies(row, dims):
        return float(row.get("openness_sum_of_14") or row["sum_of_12"])

    fails_with(check_openness_score, copies, match="raised KeyError")


def test_openness_cannot_copy_the_percentage() -> None:
    """The OSAI table publishes a percentage too; the learner's row leaves it out."""
    fails_with(check_openness_score, lambda row, dims: float(row["pct"]) * len(dims) / 100,
               match="raised KeyError: 'pct'")


def test_openness_rounded_to_whole_points_is_rejected() -> None:
    fails_with(check_openness_score, lambda row, dims: float(round(score_ok(row, dims))),
               match="off by")


def test_cost_at_one_rows_prices_fails_on_the_others() -> None:
    first = next(csv.DictReader((DATA_DIR / "api_prices.csv").open()))
    fails_with(check_api_cost, lambda row, i, o: cost_ok(first, i, o), match="api_cost for")


def test_cost_rounded_to_cents_is_rejected() -> None:
    """A request costs far less than a cent: rounding the dollars to cents is off."""
    fails_with(check_api_cost, lambda row, i, o: round(cost_ok(row, i, o), 2),
               match="a 1,000-token prompt with a 200-token answer: expected")


def test_cost_outputs_at_the_cached_price_is_not_confused_with_a_swap() -> None:
    def swapped(row, i, o):
        return cost_ok({**row, "usd_per_1m_input": row["usd_per_1m_output"],
                        "usd_per_1m_output": row["usd_per_1m_input"]}, i, o)

    fails_with(check_api_cost, swapped, match="swapped the prices")


def test_licence_unknown_commercial_use_decides_alone() -> None:
    def outputs_only_unknown(row, r, n, t):
        answer = answer_ok(row, r, n, t)
        if answer == "unknown" and row["commercial_use"] == "unknown" and \
                row["outputs_to_train_other_models"] != "unknown":
            return "yes"
        return answer

    fails_with(check_licence_answer, outputs_only_unknown, match="made-up A")


def test_licence_unknown_outputs_clause_decides_alone() -> None:
    def ignores_outputs_unknown(row, r, n, t):
        answer = answer_ok(row, r, n, t)
        return "yes" if answer == "unknown" and row["commercial_use"] == "yes" else answer

    fails_with(check_licence_answer, ignores_outputs_unknown, match="made-up B")


def test_licence_no_commercial_use_decides_alone() -> None:
    def ignores_commercial_no(row, r, n, t):
        return answer_ok({**row, "commercial_use": "yes" if row["commercial_use"] == "no"
                          else row["commercial_use"]}, r, n, t)

    fails_with(check_licence_answer, ignores_commercial_no, match="does not allow commercial use")


def test_licence_commercial_terms_without_weights_are_still_no() -> None:
    def terms_first(row, r, n, t):
        if row["commercial_use"] == "yes" and not t and row[MAU_COLUMN] in ("", "n/a"):
            return "yes"
        return answer_ok(row, r, n, t)

    fails_with(check_licence_answer, terms_first, match="No weights were released")


# ----------------------------------------------------------------- every named mistake is rejected with its hint

from glassbox.exercise_checks import open_or_closed  # noqa: E402

_ROW = next(r for r in csv.DictReader((DATA_DIR / "api_prices.csv").open()) if r["usd_per_1m_cached_input"])


@pytest.mark.parametrize("setting, hint", open_or_closed._cost_settings(_ROW), ids=lambda s: str(s)[:40])
def test_cost_rejects_each_named_mistake(setting, hint) -> None:
    def wrong(row, n_in, n_out):
        if "usd_per_1m_cached_input" in setting.values() and not row["usd_per_1m_cached_input"]:
            return cost_ok(row, n_in, n_out)
        return reference_api_cost(row, **{"input_tokens": n_in, "output_tokens": n_out, **setting})

    fails_with(check_api_cost, wrong, match=hint[:45])


@pytest.mark.parametrize("name, sum_column, name_column", open_or_closed.OPENNESS_TABLES)
def test_openness_published_sums_follow_the_points(name, sum_column, name_column) -> None:
    """The check's reference is each table's published sum: it must be open = 1, partial = 0.5, closed = 0."""
    with (DATA_DIR / name).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    dimensions = open_or_closed._dimensions(rows)
    assert len(dimensions) == int(sum_column.rsplit("_", 1)[1])  # 14 and 12 dimensions
    for row in rows:
        own = sum(open_or_closed._SCORES[row[d]] for d in dimensions)
        assert own == pytest.approx(float(row[sum_column]), abs=1e-9), row[name_column]
