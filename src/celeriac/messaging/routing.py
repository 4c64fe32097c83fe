"""AMQP exchange routing, as pure functions, for brokers that have no exchanges of their own.

RabbitMQ decides which queues receive a message; the in-memory and SQLite brokers (and later
Redis) have to make that decision themselves. If each of them wrote its own matcher, the same
message could reach different queues depending on the broker, and a task routed by a topic or
headers binding in tests could be lost in production. This module is the one emulation they
all share, written to follow RabbitMQ's behaviour (AMQP 0-9-1 plus the RabbitMQ extensions
``all-with-x`` and ``any-with-x``) rather than a simplified reading of the specification.

Everything here is pure: no I/O, no locks, no state except a bounded cache of compiled topic
binding keys. Publishing calls :func:`route` once per message, so the matchers are written for
that hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, TypeAlias

__all__ = [
    "EXCHANGE_TYPES",
    "BindingSpec",
    "direct_matches",
    "fanout_matches",
    "headers_matches",
    "route",
    "topic_matches",
]

_KeyMatcher: TypeAlias = Callable[[str], bool]

_TOPIC_CACHE_SIZE: Final = 4096
_ONE_WORD: Final = "*"
_ANY_WORDS: Final = "#"
_MISSING: Final[Any] = object()
_NO_HEADERS: Final[Mapping[str, Any]] = {}

# x-match value -> (every argument must match, arguments named "x-..." take part).
_HEADER_MODES: Final[Mapping[str, tuple[bool, bool]]] = {
    "all": (True, False),
    "any": (False, False),
    "all-with-x": (True, True),
    "any-with-x": (False, True),
}


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """One binding of a queue to an exchange, as :func:`route` needs to see it.

    Instances are immutable but not hashable when ``arguments`` is a plain ``dict``.

    Attributes:
        queue: Name of the bound queue.
        routing_key: The binding key: compared exactly by direct exchanges, a ``*``/``#``
            pattern for topic exchanges, ignored by fanout and headers exchanges.
        arguments: Binding arguments; headers exchanges match on them (plus ``x-match``).
    """

    queue: str
    routing_key: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


def direct_matches(binding_key: str, routing_key: str) -> bool:
    """Tell whether a direct exchange binding accepts a routing key.

    Args:
        binding_key: The key the queue was bound with.
        routing_key: The key the message was published with.

    Returns:
        True if the two keys are equal (case-sensitive, no patterns).
    """
    return binding_key == routing_key


def fanout_matches(binding_key: str, routing_key: str) -> bool:
    """Tell whether a fanout exchange binding accepts a routing key: it always does.

    Takes the same arguments as :func:`direct_matches` and :func:`topic_matches` so the three
    can be used interchangeably; both are ignored.

    Args:
        binding_key: Ignored.
        routing_key: Ignored.

    Returns:
        Always True.
    """
    return True


def _split_words(key: str) -> list[str]:
    # RabbitMQ treats the empty key as zero words, not as one empty word.
    return key.split(".") if key else []


def _always_matches(routing_key: str) -> bool:
    return True


def _match_words(pattern: tuple[str, ...], words: list[str]) -> bool:
    """Match words against a pattern in which ``#`` may occur, in O(len(pattern) * len(words)).

    Greedy wildcard matching: when a word cannot be matched, go back to the most recent ``#``
    and let it swallow one more word. Consecutive ``#`` must already be collapsed.
    """
    n_pattern, n_words = len(pattern), len(words)
    p = w = 0
    last_hash = -1  # index in pattern of the most recent "#", -1 if none yet
    resume = 0  # first word not yet swallowed by that "#"
    while w < n_words:
        token = pattern[p] if p < n_pattern else None
        if token == _ANY_WORDS:
            last_hash, resume = p, w
            p += 1
        elif token is not None and (token == _ONE_WORD or token == words[w]):
            p += 1
            w += 1
        elif last_hash >= 0:
            resume += 1
            p, w = last_hash + 1, resume
        else:
            return False
    # Only a trailing "#" (which matches zero words) may be left over.
    return p == n_pattern or (p == n_pattern - 1 and pattern[p] == _ANY_WORDS)


def _fixed_length_matcher(pattern: tuple[str, ...]) -> _KeyMatcher:
    """Build a matcher for a pattern of literal words and ``*`` only (at least one ``*``)."""
    dots = len(pattern) - 1
    literals = tuple((i, word) for i, word in enumerate(pattern) if word != _ONE_WORD)

    def matches(routing_key: str) -> bool:
        # Counting dots first rejects most keys without allocating; "" is zero words.
        if not routing_key or routing_key.count(".") != dots:
            return False
        words = routing_key.split(".")
        return all(words[i] == word for i, word in literals)

    return matches


def _variable_length_matcher(pattern: tuple[str, ...]) -> _KeyMatcher:
    """Build a matcher for a pattern containing at least one ``#`` and one other token."""
    min_words = sum(1 for token in pattern if token != _ANY_WORDS)

    def matches(routing_key: str) -> bool:
        words = _split_words(routing_key)
        return len(words) >= min_words and _match_words(pattern, words)

    return matches


@lru_cache(maxsize=_TOPIC_CACHE_SIZE)
def _compile_topic(binding_key: str) -> _KeyMatcher:
    """Compile a topic binding key into a routing-key predicate (cached, bounded).

    The key is never turned into a regular expression: words are compared as plain strings, so
    no character in a binding key has a meaning other than the whole words ``*`` and ``#``.
    """
    pattern: list[str] = []
    for word in _split_words(binding_key):
        if word == _ANY_WORDS and pattern and pattern[-1] == _ANY_WORDS:
            continue  # "#.#" matches exactly what "#" matches
        pattern.append(word)
    if _ANY_WORDS in pattern:
        if len(pattern) == 1:
            return _always_matches
        return _variable_length_matcher(tuple(pattern))
    if _ONE_WORD in pattern:
        return _fixed_length_matcher(tuple(pattern))
    # No wildcards: word-by-word equality is string equality.
    return binding_key.__eq__


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """Tell whether a topic exchange binding accepts a routing key (AMQP 0-9-1 semantics).

    Keys are words separated by ``.``. In the binding key, the whole word ``*`` matches exactly
    one word and the whole word ``#`` matches zero or more words; every other word, including
    the empty word in ``a..b`` and words such as ``a*``, must be equal. The empty key has zero
    words, so ``#`` matches it and ``*`` does not. Compiled binding keys are cached.

    Args:
        binding_key: The pattern the queue was bound with, e.g. ``"eu.#"``.
        routing_key: The key the message was published with, e.g. ``"eu.orders.created"``.

    Returns:
        True if the routing key matches the pattern.
    """
    return _compile_topic(binding_key)(routing_key)


def _header_mode(binding_arguments: Mapping[str, Any]) -> tuple[bool, bool]:
    mode = binding_arguments.get("x-match", "all")
    if isinstance(mode, str):
        found = _HEADER_MODES.get(mode)
        if found is not None:
            return found
    valid = ", ".join(repr(name) for name in _HEADER_MODES)
    raise ValueError(f"invalid x-match binding argument {mode!r}: expected one of {valid}")


def headers_matches(
    binding_arguments: Mapping[str, Any], headers: Mapping[str, Any] | None
) -> bool:
    """Tell whether a headers exchange binding accepts a message's headers, as RabbitMQ does.

    The binding argument ``x-match`` chooses the rule (``all`` when absent):

    * ``all``: every other binding argument matches a header; with none left, every message
      matches.
    * ``any``: at least one other binding argument matches a header; with none left, no message
      matches.
    * ``all-with-x`` / ``any-with-x``: the same, but arguments whose name starts with ``x-``
      take part too (``x-match`` itself never does). Plain ``all``/``any`` skip them.

    An argument matches when the header of the same name is present and equal to it (Python
    ``==``, so ``1``, ``1.0`` and ``True`` are equal, unlike in RabbitMQ where ``true`` is not
    ``1``). An argument whose value is None only requires the header to be present, whatever
    its value: this is how RabbitMQ treats a binding argument of AMQP type void.

    Calling this with ``headers=None`` is a cheap way to validate binding arguments when the
    binding is declared.

    Args:
        binding_arguments: The binding's arguments, including ``x-match``.
        headers: The message's application headers; None means no headers.

    Returns:
        True if the binding accepts the message.

    Raises:
        ValueError: If ``x-match`` is not one of ``all``, ``any``, ``all-with-x`` or
            ``any-with-x``.
    """
    match_all, with_x = _header_mode(binding_arguments)
    if headers is None:
        headers = _NO_HEADERS
    for name, expected in binding_arguments.items():
        if name == "x-match" or (not with_x and name.startswith("x-")):
            continue
        actual = headers.get(name, _MISSING)
        if actual is not _MISSING and (expected is None or actual == expected):
            if not match_all:
                return True
        elif match_all:
            return False
    return match_all


_BindingMatcher: TypeAlias = Callable[[BindingSpec, str, Mapping[str, Any] | None], bool]


def _direct_binding(
    binding: BindingSpec, routing_key: str, headers: Mapping[str, Any] | None
) -> bool:
    return binding.routing_key == routing_key


def _fanout_binding(
    binding: BindingSpec, routing_key: str, headers: Mapping[str, Any] | None
) -> bool:
    return True


def _topic_binding(
    binding: BindingSpec, routing_key: str, headers: Mapping[str, Any] | None
) -> bool:
    return _compile_topic(binding.routing_key)(routing_key)


def _headers_binding(
    binding: BindingSpec, routing_key: str, headers: Mapping[str, Any] | None
) -> bool:
    return headers_matches(binding.arguments, headers)


_BINDING_MATCHERS: Final[Mapping[str, _BindingMatcher]] = {
    "direct": _direct_binding,
    "fanout": _fanout_binding,
    "topic": _topic_binding,
    "headers": _headers_binding,
}

#: The exchange types :func:`route` understands.
EXCHANGE_TYPES: Final[frozenset[str]] = frozenset(_BINDING_MATCHERS)

_VALID_TYPES_TEXT: Final = ", ".join(repr(name) for name in _BINDING_MATCHERS)


def route(
    exchange_type: str,
    bindings: Iterable[BindingSpec],
    routing_key: str,
    headers: Mapping[str, Any] | None = None,
) -> list[str]:
    """Decide which queues a message published to an exchange goes to.

    Args:
        exchange_type: ``"direct"``, ``"fanout"``, ``"topic"`` or ``"headers"``.
        bindings: The exchange's bindings, in the order they were made.
        routing_key: The message's routing key (ignored by fanout and headers exchanges).
        headers: The message's application headers (used by headers exchanges only).

    Returns:
        The names of the matching queues, each at most once, in the order of their first
        matching binding. Empty if nothing matches: the caller decides whether an unroutable
        message is dropped or returned.

    Raises:
        ValueError: If ``exchange_type`` is unknown, or a headers binding has an invalid
            ``x-match``.
    """
    matcher = _BINDING_MATCHERS.get(exchange_type)
    if matcher is None:
        raise ValueError(
            f"unknown exchange type {exchange_type!r}: expected one of {_VALID_TYPES_TEXT}"
        )
    queues: list[str] = []
    seen: set[str] = set()
    for binding in bindings:
        queue = binding.queue
        if queue not in seen and matcher(binding, routing_key, headers):
            seen.add(queue)
            queues.append(queue)
    return queues
