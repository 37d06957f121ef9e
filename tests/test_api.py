"""Where the API lives (glassbox.api.open_endpoint): one setting, clear messages, no key shown.

The "other server" in these tests is the course's own provider started separately, so
``open_endpoint`` reaches it exactly as it would reach vLLM or a teacher's server: by URL
and key from the environment, over HTTP, with the real ``openai`` client.
"""

from __future__ import annotations

import socket

import pytest

from glassbox.api import EndpointError, open_endpoint
from test_provider_shared import shared_provider

API_VARIABLES = ("GLASSBOX_API_BASE", "GLASSBOX_API_KEY", "GLASSBOX_API_MODEL", "GLASSBOX_REAL_API",
                 "OPENAI_API_KEY")


@pytest.fixture(autouse=True)
def clean_api_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in API_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def other_server(request):
    """A provider running in its own process, as a teacher's server would (the one the API tests
    share, started once per test worker)."""
    return shared_provider(request)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSBOX_API_BASE", f"http://127.0.0.1:{closed_port()}/v1")
    monkeypatch.setenv("GLASSBOX_API_KEY", "sk-test-not-a-real-key-123456")
    with pytest.raises(EndpointError) as caught:
        with open_endpoint():
            pass
    message = str(caught.value)
    assert "Cannot reach the API" in message and "GLASSBOX_API_BASE" in message
    assert "sk-test" not in message


def test_endpoint_without_key_says_which_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSBOX_API_BASE", "http://127.0.0.1:1/v1")
    with pytest.raises(EndpointError, match="GLASSBOX_API_KEY is empty"):
        with open_endpoint():
            pass


def test_real_api_needs_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSBOX_REAL_API", "1")
    with pytest.raises(EndpointError, match="OPENAI_API_KEY is not set"):
        with open_endpoint():
            pass


def test_other_server_is_used_by_url_and_key(monkeypatch: pytest.MonkeyPatch, other_server, capsys) -> None:
    monkeypatch.setenv("GLASSBOX_API_BASE", other_server.base_url)
    monkeypatch.setenv("GLASSBOX_API_KEY", other_server.api_key)
    with open_endpoint(max_retries=0) as api:
        assert not api.is_course_provider and api.provider is None
        assert api.model == other_server.model_name  # the first model the server lists
        reply = api.client.completions.create(model=api.model, prompt="The nurse", max_tokens=3, seed=1)
        assert reply.usage.completion_tokens >= 1
        assert other_server.api_key not in api.describe()
        assert api.require_course_provider("swapping the weights") is False
    assert "Skipped: swapping the weights needs the course's own provider" in capsys.readouterr().out


def test_other_server_with_wrong_key_is_refused_clearly(monkeypatch: pytest.MonkeyPatch, other_server) -> None:
    monkeypatch.setenv("GLASSBOX_API_BASE", other_server.base_url)
    monkeypatch.setenv("GLASSBOX_API_KEY", "sk-wrong-key-for-this-server-0000")
    with pytest.raises(EndpointError, match="refused the key from GLASSBOX_API_KEY") as caught:
        with open_endpoint():
            pass
    assert "sk-wrong" not in str(caught.value)


def test_a_key_in_the_environment_alone_never_calls_the_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-never-be-used-000000")
    with open_endpoint(max_retries=0) as api:
        assert api.is_course_provider and api.provider is not None
        assert api.base_url.startswith("http://127.0.0.1:")
        assert api.require_course_provider("reading the log") is True
        reply = api.client.completions.create(model=api.model, prompt="The nurse", max_tokens=2)
        assert reply.choices[0].text is not None
        assert "sk-should" not in api.describe()
    assert not api.provider.running
