"""Chapter 01's scorecard: its marks come from experiments that really ran.

Withhold one artefact of a release and the marks that need it flip, with the error the
experiment met; give it back and they flip again. The closed tier is the course's real
provider (a uvicorn process reached by the real ``openai`` client), and ``network_cut``
is tested against a real listening socket.
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
