"""The operator's moderation layer: a policy file, ``POST /v1/moderations``, and blocked requests.

A provider that keeps its model behind an API can check every prompt and every reply
against its own policy. This module is that check, in the simplest form that still
behaves like a real one: a list of categories, each a set of weighted patterns.

The policy file (``--moderation FILE``) is JSON::

    {
      "model": "glassbox-moderation-latest",        # optional: the name /v1/moderations answers to
      "apply_to": ["input", "output"],              # optional (default both): what chat/completions check
      "categories": {
        "vault": {                                  # a name: letters, digits, _ - / (at most 64)
          "patterns": ["vault code", {"pattern": "\\\\bcode word\\\\b", "weight": 0.6}],
          "threshold": 0.5                          # optional (default 0.5), in (0, 1]
        }
      }
    }

A pattern is a Python regular expression, matched case-insensitively anywhere in the text.
Written as a plain string it has weight 1.0; as an object it has its own ``weight`` in (0, 1].
A category's score is ``1 - prod(1 - weight)`` over its patterns that match (0.0 if none
does), and the category is flagged when its score reaches its threshold. A text is flagged
when any category is. This is **built in** by the course, not OpenAI's classifier: OpenAI's
``omni-moderation-latest`` is a trained model whose categories (``harassment``,
``violence``, ...) are fixed; here the operator writes the categories.

A file that cannot be read, is not JSON, or breaks any rule above is refused when the
provider starts, with a message naming the file, the category and the pattern.

``POST /v1/moderations`` takes ``{"input": "text" | ["text", ...] | [{"type": "text", "text": ...}, ...],
"model": optional}`` and answers in OpenAI's shape: ``{"id": "modr-...", "model": ...,
"results": [{"flagged", "categories": {name: bool}, "category_scores": {name: float}}]}``.
Limits (this provider's own; OpenAI does not publish exact ones): at most
``MAX_MODERATION_INPUTS`` texts of at most ``MAX_MODERATION_CHARS`` characters each.
Without a policy the endpoint answers 404 ``moderation_not_enabled``.

What a blocked chat or completion request gets (the choice, and why):

* **A flagged prompt** gets HTTP 400 in OpenAI's error shape with ``code: "content_filter"``
  and ``param`` ``messages`` or ``prompt``; the model is never run and the openai client
  raises ``BadRequestError``. OpenAI's own API reference documents no error for a blocked
  prompt; Azure OpenAI, which serves OpenAI's models, documents exactly this (400,
  ``code: content_filter``) for a prompt its content filter blocks, so we copy that.
* **A flagged reply** gets HTTP 200 with that choice's ``finish_reason: "content_filter"``
  and its text withheld (chat: ``content`` null; completions: ``text`` ""), logprobs
  removed, and ``usage`` still counting the tokens generated. OpenAI's API reference defines
  ``finish_reason`` ``content_filter`` as "content was omitted due to a flag from our
  content filters", on both chat and legacy completions.
* **Streaming** with output moderation: the reply is checked whole before any of it is
  sent, so it arrives in one piece at its end (or as an empty final chunk with
  ``finish_reason: "content_filter"``). Without output moderation it streams as usual.

Every check that flags something is written to the request log (``moderation``: the stage,
the flagged categories), which is how an operator spots one key trying again and again.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODERATION_MODEL = "glassbox-moderation-latest"
STAGES = ("input", "output")
MAX_CATEGORIES = 32
MAX_PATTERNS = 256  #: per category
MAX_PATTERN_CHARS = 500
MAX_MODERATION_INPUTS = 32  #: texts in one /v1/moderations request
MAX_MODERATION_CHARS = 20_000  #: characters in one text
DEFAULT_THRESHOLD = 0.5
_CATEGORY = re.compile(r"^[A-Za-z0-9_/-]{1,64}$")
_MODEL = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class PolicyError(ValueError):
    """A moderation policy could not be used; the message says where and why."""


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    weight: float


@dataclass(frozen=True)
class Category:
    name: str
    rules: tuple[Rule, ...]
    threshold: float

    def score(self, text: str) -> float:
        keep = 1.0
        for rule in self.rules:
            if rule.pattern.search(text):
                keep *= 1.0 - rule.weight
        return round(1.0 - keep, 6)


@dataclass(frozen=True)
class Policy:
    """A parsed policy. :meth:`classify` gives one result in OpenAI's shape."""

    categories: tuple[Category, ...]
    apply_to: frozenset[str] = field(default_factory=lambda: frozenset(STAGES))
    model: str = DEFAULT_MODERATION_MODEL

    def classify(self, text: str) -> dict[str, Any]:
        scores = {category.name: category.score(text) for category in self.categories}
        flags = {category.name: scores[category.name] >= category.threshold for category in self.categories}
        return {"flagged": any(flags.values()), "categories": flags, "category_scores": scores}

    def flagged_categories(self, text: str) -> list[str]:
        result = self.classify(text)
        return [name for name, flagged in result["categories"].items() if flagged]

    def checks(self, stage: str) -> bool:
        return stage in self.apply_to


def _weight(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
        raise PolicyError(f"{where}: {name} must be a number greater than 0 and at most 1, not {json.dumps(value)[:40]}.")
    return float(value)


def parse_policy(data: Any, where: str = "the moderation policy") -> Policy:
    """Check a policy (the JSON already parsed) and build it; :class:`PolicyError` names the first problem."""
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: the policy must be a JSON object with a 'categories' object.")
    unknown = sorted(set(data) - {"model", "apply_to", "categories", "description"})
    if unknown:
        raise PolicyError(f"{where}: unknown key {unknown[0]!r} (allowed: model, apply_to, categories, description).")
    model = data.get("model", DEFAULT_MODERATION_MODEL)
    if not isinstance(model, str) or not _MODEL.match(model):
        raise PolicyError(f"{where}: 'model' must be a name of 1 to 64 letters, digits and _ . : -.")
    apply_to = data.get("apply_to", list(STAGES))
    if not isinstance(apply_to, list) or not apply_to or any(stage not in STAGES for stage in apply_to):
        raise PolicyError(f"{where}: 'apply_to' must be a non-empty list of \"input\" and/or \"output\".")
    categories = data.get("categories")
    if not isinstance(categories, dict) or not categories:
        raise PolicyError(f"{where}: 'categories' must be a non-empty object mapping a category name to its patterns.")
    if len(categories) > MAX_CATEGORIES:
        raise PolicyError(f"{where}: at most {MAX_CATEGORIES} categories, not {len(categories)}.")
    built = []
    for name, spec in categories.items():
        if not _CATEGORY.match(name):
            raise PolicyError(f"{where}: the category name {name[:70]!r} may use only letters, digits and _ / - (1 to 64).")
        here = f"{where}, category {name!r}"
        if not isinstance(spec, dict):
            raise PolicyError(f"{here}: expected an object with 'patterns' (and optionally 'threshold').")
        extra = sorted(set(spec) - {"patterns", "threshold", "description"})
        if extra:
            raise PolicyError(f"{here}: unknown key {extra[0]!r} (allowed: patterns, threshold, description).")
        patterns = spec.get("patterns")
        if not isinstance(patterns, list) or not patterns:
            raise PolicyError(f"{here}: 'patterns' must be a non-empty list.")
        if len(patterns) > MAX_PATTERNS:
            raise PolicyError(f"{here}: at most {MAX_PATTERNS} patterns, not {len(patterns)}.")
        threshold = _weight(spec.get("threshold", DEFAULT_THRESHOLD), here, "'threshold'")
        rules = []
        for number, item in enumerate(patterns):
            at = f"{here}, pattern {number}"
            weight = 1.0
            if isinstance(item, dict):
                extra = sorted(set(item) - {"pattern", "weight"})
                if extra or "pattern" not in item:
                    raise PolicyError(f"{at}: a pattern object has 'pattern' and optionally 'weight', nothing else.")
                weight = _weight(item.get("weight", 1.0), at, "'weight'")
                item = item["pattern"]
            if not isinstance(item, str) or not item:
                raise PolicyError(f"{at}: a pattern must be a non-empty string (a regular expression).")
            if len(item) > MAX_PATTERN_CHARS:
                raise PolicyError(f"{at}: a pattern may have at most {MAX_PATTERN_CHARS} characters.")
            try:
                compiled = re.compile(item, re.IGNORECASE)
            except re.error as error:
                raise PolicyError(f"{at}: {item[:60]!r} is not a valid regular expression ({error}).") from None
            rules.append(Rule(compiled, weight))
        built.append(Category(name, tuple(rules), threshold))
    return Policy(tuple(built), frozenset(apply_to), model)


def load_policy(path: str | Path) -> Policy:
    """Read and check a policy file (see the module docstring for the format)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError(f"Cannot read the moderation policy {path}: {error.strerror or error}.") from None
    except UnicodeDecodeError:
        raise PolicyError(f"The moderation policy {path} is not UTF-8 text.") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise PolicyError(f"The moderation policy {path.name} is not valid JSON ({error}).") from None
    return parse_policy(data, path.name)


def moderation_inputs(body: Any) -> tuple[list[str] | None, str | None, str | None]:
    """The texts of a /v1/moderations body: ``(texts, model, None)`` or ``(None, None, error message)``."""
    if not isinstance(body, dict):
        return None, None, "The request body must be a JSON object with 'input'."
    extra = sorted(set(body) - {"input", "model"})
    if extra:
        return None, None, f"Unrecognized request argument supplied: {extra[0]}"
    if "input" not in body:
        return None, None, "Missing required parameter: 'input'."
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        return None, None, "Invalid value for 'model': expected a string."
    given = body["input"]
    items = [given] if isinstance(given, str) else given
    if not isinstance(items, list) or not items:
        return None, None, "'input' must be a string, or a non-empty list of strings or of {\"type\": \"text\", \"text\": ...} objects."
    if len(items) > MAX_MODERATION_INPUTS:
        return None, None, f"Too many inputs: {len(items):,}; at most {MAX_MODERATION_INPUTS} per request."
    texts = []
    for index, item in enumerate(items):
        if isinstance(item, dict):
            if item.get("type") != "text" or not isinstance(item.get("text"), str) or set(item) != {"type", "text"}:
                return None, None, (f"Invalid 'input[{index}]': only text is supported here, as {{\"type\": \"text\", \"text\": ...}} "
                                    "(images are not).")
            item = item["text"]
        if not isinstance(item, str):
            return None, None, f"Invalid 'input[{index}]': expected a string."
        if len(item) > MAX_MODERATION_CHARS:
            return None, None, f"'input[{index}]' is too long: {len(item):,} characters; at most {MAX_MODERATION_CHARS:,}."
        texts.append(item)
    return texts, model, None


def moderation_response(policy: Policy, texts: list[str]) -> dict[str, Any]:
    return {"id": "modr-" + secrets.token_hex(12), "model": policy.model, "results": [policy.classify(text) for text in texts]}


# ----- used by the chat and completions routes -----------------------------------------------


def check_prompt(policy: Policy | None, texts: list[str], param: str, log: dict[str, Any]) -> None:
    """Raise the 400 ``content_filter`` error if any prompt text is flagged (and note it in the log entry)."""
    if policy is None or not policy.checks("input"):
        return
    from glassbox.provider.errors import APIError

    for text in texts:
        flagged = policy.flagged_categories(text)
        if flagged:
            log["moderation"] = {"stage": "input", "flagged": flagged}
            raise APIError(400, "Your request was rejected by this provider's moderation policy "
                           f"(flagged: {', '.join(flagged)}). Change the {param} and try again.",
                           param=param, code="content_filter")


def output_flagged(policy: Policy | None, text: str) -> list[str]:
    """The categories a reply is flagged for (empty if none, or if outputs are not moderated)."""
    if policy is None or not policy.checks("output"):
        return []
    return policy.flagged_categories(text)


def note_output(log: dict[str, Any], flagged: list[str]) -> None:
    if flagged:
        entry = log.setdefault("moderation", {"stage": "output", "flagged": []})
        entry["flagged"] = sorted(set(entry["flagged"]) | set(flagged))


def filter_choice(choice: dict[str, Any], chat: bool) -> dict[str, Any]:
    """A choice whose text was flagged: text withheld, logprobs removed, finish_reason content_filter."""
    if chat:
        choice["message"]["content"] = None
    else:
        choice["text"] = ""
    choice["logprobs"] = None
    choice["finish_reason"] = "content_filter"
    return choice
