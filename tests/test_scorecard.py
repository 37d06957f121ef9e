"""Chapter 01's scorecard: its marks come from experiments that really ran.

Withhold one artefact of a release and the marks that need it flip, with the error the
experiment met; give it back and they flip again. The closed tier is the course's real
provider (a uvicorn process reached by the real ``openai`` client), and ``network_cut``
is tested against a real listening socket, under both its strict form and the offline rule
(loopback allowed). Each mark says whether it was measured or built in, and the tier rule
reads the licence: a use-restricting licence keeps a release with open code, data and
weights out of "fully open".
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
from pathlib import Path

import openai
import pytest

from glassbox import scorecard
from glassbox.paths import REPO_DIR, TINYGPT_WEIGHTS_DIR
from glassbox.tinygpt import corpus, train

WEIGHT_RIGHTS = ["use", "offline", "weights", "modify", "self_host"]
TRAINING_LOG = TINYGPT_WEIGHTS_DIR / "training_log.json"


def copy_release(folder: Path, files: list[str]) -> Path:
    folder.mkdir()
    for name in files:
        shutil.copy(TINYGPT_WEIGHTS_DIR / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def weights_scores(tmp_path_factory) -> dict[str, dict[str, scorecard.Outcome]]:
    """TinyGPT scored twice: from a full copy of its weights folder and from one without the weights."""
    base = tmp_path_factory.mktemp("scorecard")
    full = copy_release(base / "full", ["config.json", "model.safetensors"])
    withheld = copy_release(base / "withheld", ["config.json"])
    return {
        "full": scorecard.score(scorecard.Release("TinyGPT", "open weights", weights_dir=full), base),
        "withheld": scorecard.score(scorecard.Release("TinyGPT", "open weights", weights_dir=withheld), base),
    }


def test_every_weight_right_passes_with_the_weights(weights_scores) -> None:
    full = weights_scores["full"]
    assert all(full[key].ok for key in WEIGHT_RIGHTS + ["architecture"]), full
    assert "0 attempts" in full["offline"].detail
    assert "same text" in full["self_host"].detail


def test_withholding_the_weights_flips_exactly_the_weight_rights(weights_scores) -> None:
    withheld = weights_scores["withheld"]
    for key in WEIGHT_RIGHTS:
        assert not withheld[key].ok, (key, withheld[key])
        assert "model.safetensors" in withheld[key].detail, withheld[key].detail
    assert withheld["architecture"].ok, "config.json is still there: the architecture can still be read"


def test_no_weights_folder_at_all_is_not_released(tmp_path) -> None:
    outcome = scorecard.score(scorecard.Release("nothing", "closed"), tmp_path)
    assert not any(o.ok for o in outcome.values())
    assert outcome["weights"].detail.startswith("NotReleased")
    assert all(o.how == scorecard.BUILT_IN for o in outcome.values()), outcome


def test_marks_say_how_they_were_obtained(weights_scores) -> None:
    full = weights_scores["full"]
    assert all(o.how == scorecard.MEASURED for key, o in full.items() if key in WEIGHT_RIGHTS), full
    # this release was assembled without the data: its ❌ for data and retraining is by construction
    assert not full["data"].ok and full["data"].how == scorecard.BUILT_IN, full["data"]
    assert not full["retrain"].ok and full["retrain"].how == scorecard.BUILT_IN, full["retrain"]
    # a weights file withheld from a folder is still measured: the experiment looked and did not find it
    withheld = weights_scores["withheld"]
    assert withheld["weights"].how == scorecard.MEASURED and "model.safetensors" in withheld["weights"].detail


def test_the_table_shows_how_each_mark_was_obtained() -> None:
    release = scorecard.Release("a", "fully open")
    outcomes = {r.key: scorecard.Outcome(True, "", scorecard.MEASURED) for r in scorecard.RIGHTS}
    outcomes["data"] = scorecard.Outcome(False, "NotReleased", scorecard.BUILT_IN)
    table = scorecard.to_markdown([release], [outcomes])
    assert table.count("✅ measured") == len(scorecard.RIGHTS) - 1 and table.count("❌ built in") == 1, table


# ----------------------------------------------------------------- the tier rule

@pytest.mark.parametrize("licence, tier", [("open", "fully open"), ("yes", "fully open"),
                                           ("partial", "open weights"), ("closed", "open weights")])
def test_a_restrictive_licence_changes_the_tier(licence, tier) -> None:
    got, reason = scorecard.tier_of("open", "open", "open", licence)
    assert got == tier, (licence, got, reason)
    if tier == "open weights":
        assert "licence" in reason and "OSI" in reason, reason


def test_tier_rule_on_the_openness_table_puts_bloomz_with_open_weights() -> None:
    import csv

    from glassbox.paths import DATA_DIR

    rows = {r["yaml"]: r for r in csv.DictReader((DATA_DIR / "openness_opening_up_chatgpt.csv").open())}
    tiers = {y: scorecard.tier_of(r["llmweights"], r["llmdata"], r["opencode"], r["license"]) for y, r in rows.items()}
    assert tiers["bloomz.yaml"][0] == "open weights" and "licence" in tiers["bloomz.yaml"][1], tiers["bloomz.yaml"]
    assert tiers["olmo-7b-instruct.yaml"][0] == "fully open"
    assert tiers["chatgpt.yaml"][0] == "closed API"
    assert "data closed" in tiers["mistral-7B.yaml"][1]


def test_training_data_read_and_verified() -> None:
    detail = scorecard.try_read_training_data(corpus.training_text, "", TRAINING_LOG)
    assert "= the training log's" in detail


@pytest.mark.parametrize("cut, message", [
    (None, "NotReleased"),
    (lambda: corpus.training_text()[: len(corpus.training_text()) // 2], "differs from the published"),
])
def test_cutting_the_training_data_flips_data_and_retrain(cut, message) -> None:
    release = scorecard.Release("TinyGPT", "fully open", training_text=cut, training_code=train,
                                training_log=TRAINING_LOG, missing_data="NotReleased: withheld for the test")
    data = scorecard._attempt(lambda: scorecard.try_read_training_data(cut, release.missing_data, TRAINING_LOG))
    retrain = scorecard._attempt(lambda: scorecard.try_retrain(cut, train, release.missing_data, TRAINING_LOG))
    assert not data.ok and message in data.detail, data
    assert not retrain.ok and message in retrain.detail, retrain


def test_retraining_runs_the_real_code_and_matches_the_log() -> None:
    outcome = scorecard._attempt(lambda: scorecard.try_retrain(corpus.training_text, train, "", TRAINING_LOG))
    assert outcome.ok, outcome
    assert "(the published log's)" in outcome.detail, outcome.detail


def test_withholding_the_training_code_flips_retrain() -> None:
    outcome = scorecard._attempt(lambda: scorecard.try_retrain(corpus.training_text, None, "", TRAINING_LOG))
    assert not outcome.ok and "no training code" in outcome.detail


# ----------------------------------------------------------------- network_cut

@pytest.fixture
def server():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    yield listener
    listener.close()


def test_network_cut_refuses_and_records_a_real_connection(server) -> None:
    address = server.getsockname()
    before = os.environ.get("HF_HUB_OFFLINE")
    with scorecard.network_cut() as attempts:
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        with pytest.raises(scorecard.NetworkCut):
            socket.create_connection(address, timeout=1)
        with socket.socket() as other:
            assert other.connect_ex(address) == errno.ECONNREFUSED
    assert [tuple(a[:2]) for a in attempts] == [address, address]
    with pytest.raises(socket.timeout):
        server.accept()  # nothing got through
    assert os.environ.get("HF_HUB_OFFLINE") == before
    with socket.create_connection(address, timeout=1):  # and connections work again afterwards
        connection, _ = server.accept()
        connection.close()


def test_the_offline_rule_lets_loopback_through_and_records_it(server) -> None:
    address = server.getsockname()
    with scorecard.network_cut(allow_loopback=True) as attempts:
        with socket.create_connection(address, timeout=1):
            connection, _ = server.accept()
            connection.close()
    assert list(attempts) == [] and [tuple(a[:2]) for a in attempts.allowed] == [address]


def test_a_loopback_stand_in_for_a_remote_server_is_refused(server) -> None:
    address = server.getsockname()
    with scorecard.network_cut(allow_loopback=True, remote=(address,)) as attempts:
        with pytest.raises(scorecard.NetworkCut):
            socket.create_connection(address, timeout=1)
    assert [tuple(a[:2]) for a in attempts] == [address] and attempts.allowed == []


def test_the_offline_rule_still_refuses_off_machine_addresses() -> None:
    with scorecard.network_cut(allow_loopback=True) as attempts:
        with pytest.raises(scorecard.NetworkCut):
            socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never a real host
    assert [tuple(a[:2]) for a in attempts] == [("192.0.2.1", 80)]


def test_network_cut_catches_code_that_swallows_the_error(server) -> None:
    with scorecard.network_cut() as attempts:
        try:
            socket.create_connection(server.getsockname(), timeout=1)
        except OSError:
            pass
    assert len(attempts) == 1


# ----------------------------------------------------------------- the closed tier

@pytest.fixture(scope="module")
def api():
    from glassbox.api import open_endpoint

    with open_endpoint(max_retries=0, model="tinygpt") as endpoint:
        yield endpoint


def test_the_api_tier_gives_only_use(api) -> None:
    results = scorecard.score(scorecard.Release(api.model, "closed API", endpoint=api))
    assert [key for key, outcome in results.items() if outcome.ok] == ["use"], results
    assert "APIConnectionError" in results["offline"].detail and "network cut" in results["offline"].detail
    assert "NotFoundError" in results["weights"].detail and "404" in results["weights"].detail
    assert "only" in results["architecture"].detail and "id" in results["architecture"].detail
    assert results["use"].how == scorecard.MEASURED
    assert all(results[key].how == scorecard.BUILT_IN for key in results if key != "use"), results


def test_the_api_answers_under_the_offline_rule_when_not_a_stand_in(api) -> None:
    """Loopback is allowed by the rule: only the provider's standing for a remote machine makes it fail."""
    from glassbox.api import Endpoint

    local = Endpoint(client=api.client, model=api.model, base_url=api.base_url, is_course_provider=False)
    outcome = scorecard._attempt(lambda: scorecard.try_offline_api(local))
    assert outcome.ok and "network cut" in outcome.detail, outcome


def test_a_bad_key_flips_use(api) -> None:
    from glassbox.api import Endpoint

    client = openai.OpenAI(base_url=api.base_url, api_key="sk-not-a-key", max_retries=0)
    try:
        bad = Endpoint(client=client, model=api.model, base_url=api.base_url, is_course_provider=True)
        outcome = scorecard._attempt(lambda: scorecard.try_use_api(bad))
    finally:
        client.close()
    assert not outcome.ok and "AuthenticationError" in outcome.detail, outcome


# ----------------------------------------------------------------- the table

def test_every_mark_links_to_a_course_chapter() -> None:
    releases = [scorecard.Release("a", "fully open"), scorecard.Release("b", "closed API", endpoint=object())]
    outcomes = [{r.key: scorecard.Outcome(True, "") for r in scorecard.RIGHTS}] * 2
    table = scorecard.to_markdown(releases, outcomes)
    links = re.findall(r"\]\((\d\d_\w+)\.ipynb\)", table)
    assert len(links) == 2 * len(scorecard.RIGHTS)
    for link in set(links):
        assert (REPO_DIR / "notebooks" / f"{link}.ipynb").is_file(), f"the scorecard links to a missing chapter: {link}"
