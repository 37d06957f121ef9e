"""The provider's small parts, tested alone (no server), and the one server the API and fuzz tests share.

``shared_provider(request)`` starts one real provider (TinyGPT) for the whole pytest run
the first time a test module asks for it, and stops it when pytest ends, so the API tests
and the fuzz tests do not each wait for a start.
"""

from __future__ import annotations

import math

import pytest

from glassbox.provider.chat import TURN_STOPS, format_chat, reply_content
from glassbox.provider.ratelimit import Bucket, RateLimiter, format_reset
from glassbox.provider.settings import KeyFileError, check_keys, parse_keys_file
from glassbox.provider.tokens import complete_utf8_length, decode_complete, display_token, stop_holdback

_SHARED: dict[str, object] = {}


def shared_provider(request: pytest.FixtureRequest, last_user: bool = False):
    """The provider shared by test modules: started once; stopped after the module that says it is the
    last user (test_provider_fuzz.py, which runs after test_provider_api.py), or at the end of the run."""
    from glassbox.provider import start_provider

    handle = _SHARED.get("provider")
    if handle is None or not handle.running:  # type: ignore[union-attr]
        handle = start_provider("tinygpt", n_keys=4)
        _SHARED["provider"] = handle
        request.config.add_cleanup(handle.stop)
    if last_user:
        request.addfinalizer(handle.stop)
    return handle


# ----- keys ------------------------------------------------------------------------------------


def test_keys_file_with_and_without_labels(tmp_path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# the class of 2025\n\nalice sk-alice-123456\nsk-anonymous-999999\n  bob   sk-bob-abcdef  \n", encoding="utf-8")
    keys = parse_keys_file(path)
    assert [key.key_id for key in keys] == ["alice", "key-2", "bob"]
    assert [key.secret for key in keys] == ["sk-alice-123456", "sk-anonymous-999999", "sk-bob-abcdef"]
    assert "sk-alice" not in repr(keys)  # a key never shows in a repr


@pytest.mark.parametrize("line, problem", [
    ("a b c", "found 3 words"),
    ("bad/label sk-x", "label"),
])
def test_keys_file_mistakes_name_the_line(tmp_path, line: str, problem: str) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"ok-key\n{line}\n", encoding="utf-8")
    with pytest.raises(KeyFileError, match=f"keys.txt, line 2.*{problem}"):
        parse_keys_file(path)


def test_missing_keys_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(KeyFileError, match="Cannot read the keys file"):
        parse_keys_file(tmp_path / "nope.txt")


def test_duplicate_keys_and_admin_key_reuse_are_refused(tmp_path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("a sk-same-1\nb sk-same-1\n", encoding="utf-8")
    with pytest.raises(KeyFileError, match="repeats"):
        check_keys(parse_keys_file(path), "sk-admin-1")
    path.write_text("a sk-admin-1\n", encoding="utf-8")
    with pytest.raises(KeyFileError, match="admin key"):
        check_keys(parse_keys_file(path), "sk-admin-1")


# ----- rate limits ---------------------------------------------------------------------------


def test_bucket_refills_at_its_capacity_per_minute() -> None:
    bucket = Bucket(capacity=60, level=0.0, updated=0.0)
    bucket.refill(30.0)
    assert bucket.level == pytest.approx(30.0)
    bucket.refill(1000.0)
    assert bucket.level == 60  # never above capacity
    assert bucket.wait_for(61) == math.inf


def test_limiter_refuses_the_request_after_the_allowance_and_says_when() -> None:
    limiter = RateLimiter(rpm=3, tpm=None)
    for expected_remaining in ("2", "1", "0"):
        headers = limiter.admit("k", tokens=10, now=100.0)
        assert headers["x-ratelimit-remaining-requests"] == expected_remaining
        assert headers["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(Exception) as raised:
        limiter.admit("k", tokens=10, now=100.0)
    error = raised.value
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    assert error.headers["retry-after"] == "20"  # 3 per minute: one every 20 s
    assert error.headers["retry-after-ms"] == "20000"
    limiter.admit("other", tokens=10, now=100.0)  # another key has its own bucket
    limiter.admit("k", tokens=10, now=120.5)  # and 20 s later there is room again


def test_limiter_counts_tokens_and_refuses_what_can_never_fit() -> None:
    limiter = RateLimiter(rpm=None, tpm=100)
    headers = limiter.admit("k", tokens=70, now=0.0)
    assert headers["x-ratelimit-remaining-tokens"] == "30"
    with pytest.raises(Exception) as raised:
        limiter.admit("k", tokens=50, now=0.0)
    assert raised.value.headers["retry-after"] == "12"  # 20 tokens short at 100/60 per second
    with pytest.raises(Exception) as raised:
        limiter.admit("k", tokens=101, now=0.0)
    assert raised.value.headers["x-should-retry"] == "false" and "Request too large" in raised.value.message


def test_reset_durations_in_openai_format() -> None:
    assert format_reset(0.02) == "20ms"
    assert format_reset(1.0) == "1s"
    assert format_reset(360.0) == "6m0s"


# ----- chat format and text ------------------------------------------------------------------


def test_chat_format_is_the_documented_plain_text() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": "Hello."}, {"role": "developer", "content": "Rule."}]
    assert format_chat(messages) == "System: Be brief.\nUser: Hi\nAssistant: Hello.\nSystem: Rule.\nAssistant:"
    assert "\nUser:" in TURN_STOPS
    assert reply_content(" Hello") == "Hello" and reply_content("  two") == " two" and reply_content("x") == "x"


def test_utf8_helpers_keep_incomplete_characters_back() -> None:
    euro = "€".encode()  # three bytes
    assert complete_utf8_length(b"ab" + euro[:2]) == 2
    assert complete_utf8_length(b"ab" + euro) == 5
    assert decode_complete(b"ab" + euro[:1]) == "ab"
    assert display_token(euro[:2]) == "bytes:\\xe2\\x82"
    assert display_token(b" hello") == " hello"


def test_stop_holdback_is_the_longest_possible_start_of_a_stop() -> None:
    assert stop_holdback("the end\nUs", ("\nUser:",)) == 3
    assert stop_holdback("the end", ("\nUser:",)) == 0
    assert stop_holdback("abcab", ("abx", "bcabz")) == 4
