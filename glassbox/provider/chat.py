"""The plain-text chat format (GPT-2 and TinyGPT are base models, with no chat template).

Messages become one line each, ``Role: content``, and the prompt ends with
``Assistant:`` for the model to continue::

    System: You answer in one sentence.
    User: What is a token?
    Assistant:

``developer`` messages are shown as ``System:``. The reply ends where the model starts a
new turn (``\\nUser:``, ``\\nSystem:`` or ``\\nAssistant:``, which are not counted among
your 4 ``stop`` sequences), at ``<|endoftext|>``, at one of your ``stop`` sequences or at
``max_tokens``. One leading space is removed from the reply's content (the model writes
``Assistant: Hello``); the logprobs keep the tokens exactly as generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROLE_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
TURN_STOPS: tuple[str, ...] = ("\nUser:", "\nSystem:", "\nAssistant:")


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(part.text if hasattr(part, "text") else str(part["text"]) for part in content)


def format_chat(messages: Sequence[Any]) -> str:
    """The prompt for a list of messages (pydantic ``ChatMessage`` objects or dicts with role/content)."""
    lines = []
    for message in messages:
        role = message.role if hasattr(message, "role") else message["role"]
        content = message.content if hasattr(message, "content") else message["content"]
        lines.append(f"{ROLE_LABELS[role]}: {message_text(content)}")
    lines.append("Assistant:")
    return "\n".join(lines)


def reply_content(text: str) -> str:
    """The assistant's content: the generated text without its one leading space."""
    return text[1:] if text.startswith(" ") else text


def chat_prompt(tokenizer: Any, messages: Sequence[Any]) -> tuple[str, tuple[str, ...]]:
    """The prompt text for ``messages`` and the stop strings that end the reply.

    A tokenizer with a ``chat_template`` (``tinygpt-chat``) formats the conversation with it,
    exactly as ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` does in a
    learner's own code; the reply then ends at the model's end-of-text token. Without a template
    (GPT-2, TinyGPT base) the plain ``Role: content`` format above is used, with its turn stops.
    """
    if getattr(tokenizer, "chat_template", None):
        plain = [{"role": "system" if (message.role if hasattr(message, "role") else message["role"]) == "developer"
                  else (message.role if hasattr(message, "role") else message["role"]),
                  "content": message_text(message.content if hasattr(message, "content") else message["content"])}
                 for message in messages]
        return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True), ()
    return format_chat(messages), TURN_STOPS
