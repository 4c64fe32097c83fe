"""Tests for the exchange routing that brokers without native exchanges share.

Topic matching is checked against a reference definition written here independently of the
implementation: a plain recursive matcher over word lists. Both follow RabbitMQ in reading the
empty key as zero words (``split_topic_key(<<>>)`` is ``[]`` in ``rabbit_db_topic_exchange``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from celeriac.messaging.routing import (
    EXCHANGE_TYPES,
    BindingSpec,
    _compile_topic,
    direct_matches,
    fanout_matches,
    headers_matches,
    route,
    topic_matches,
)

# --------------------------------------------------------------------------------------------
# Reference definitions
# --------------------------------------------------------------------------------------------


def reference_words(key: str) -> tuple[str, ...]:
    """Split a key into words the AMQP way: the empty key has no words."""
    return tuple(key.split(".")) if key else ()


@functools.cache
def reference_match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    """AMQP topic matching, straight from the definition of ``*`` and ``#``."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        # "#" either stops here (matches zero more words) or swallows one word and stays.
        return reference_match(rest, words) or (bool(words) and reference_match(pattern, words[1:]))
    if not words:
        return False
    return (head == "*" or head == words[0]) and reference_match(rest, words[1:])


def reference_topic(binding_key: str, routing_key: str) -> bool:
    return reference_match(reference_words(binding_key), reference_words(routing_key))


def reference_headers(arguments: Mapping[str, Any], headers: Mapping[str, Any] | None) -> bool:
    """RabbitMQ headers matching, stated as directly as possible."""
    mode = arguments.get("x-match", "all")
    with_x = mode in ("all-with-x", "any-with-x")
    present = headers or {}
    outcomes = [
        name in present and (expected is None or present[name] == expected)
        for name, expected in arguments.items()
        if name != "x-match" and (with_x or not name.startswith("x-"))
    ]
    return all(outcomes) if mode.startswith("all") else any(outcomes)


# --------------------------------------------------------------------------------------------
# Strategies: a tiny alphabet so that keys often match
# --------------------------------------------------------------------------------------------

words = st.text(alphabet="ab", max_size=2)  # includes the empty word, as in "a..b"
tokens = st.one_of(words, st.just("*"), st.just("#"))
binding_tokens = st.lists(tokens, max_size=6)
routing_words = st.lists(words, max_size=7)
# Arbitrary short strings over the characters that matter, including "a*", "#a" and "..".
raw_keys = st.text(alphabet="ab.*#", max_size=10)


def join(parts: list[str]) -> str:
    return ".".join(parts)


@st.composite
def matching_pairs(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A binding key's tokens and a routing key built by filling in its wildcards."""
    pattern = draw(binding_tokens)
    filled: list[str] = []
    for token in pattern:
        if token == "*":
            filled.append(draw(words))
        elif token == "#":
            filled.extend(draw(st.lists(words, max_size=3)))
        else:
            filled.append(token)
    # A single empty word cannot be written down: "" is the key with no words at all.
    assume(filled != [""])
    return pattern, filled


# --------------------------------------------------------------------------------------------
# Topic: properties
# --------------------------------------------------------------------------------------------


@given(binding_tokens, routing_words)
def test_topic_matching_agrees_with_the_reference_definition(
    pattern: list[str], routing: list[str]
) -> None:
    binding_key, routing_key = join(pattern), join(routing)
    assert topic_matches(binding_key, routing_key) == reference_topic(binding_key, routing_key)


@given(raw_keys, raw_keys)
def test_topic_matching_agrees_with_the_reference_on_arbitrary_strings(
    binding_key: str, routing_key: str
) -> None:
    assert topic_matches(binding_key, routing_key) == reference_topic(binding_key, routing_key)


@given(matching_pairs())
def test_a_routing_key_made_by_filling_in_the_wildcards_matches(
    pair: tuple[list[str], list[str]],
) -> None:
    pattern, filled = pair
    assert topic_matches(join(pattern), join(filled))


@given(matching_pairs(), st.data())
def test_replacing_a_word_of_a_matching_binding_key_by_a_star_still_matches(
    pair: tuple[list[str], list[str]], data: st.DataObject
) -> None:
    pattern, filled = pair
    literal_positions = [i for i, token in enumerate(pattern) if token not in ("*", "#")]
    assume(literal_positions)
    position = data.draw(st.sampled_from(literal_positions))
    starred = [*pattern[:position], "*", *pattern[position + 1 :]]
    assert topic_matches(join(starred), join(filled))


@given(matching_pairs(), st.data())
def test_replacing_a_word_of_a_matching_binding_key_by_a_hash_still_matches(
    pair: tuple[list[str], list[str]], data: st.DataObject
) -> None:
    pattern, filled = pair
    assume(pattern)
    position = data.draw(st.integers(min_value=0, max_value=len(pattern) - 1))
    hashed = [*pattern[:position], "#", *pattern[position + 1 :]]
    assert topic_matches(join(hashed), join(filled))


@given(routing_words, routing_words)
def test_a_binding_key_without_wildcards_matches_exactly_itself(
    bound: list[str], routed: list[str]
) -> None:
    binding_key, routing_key = join(bound), join(routed)
    assert topic_matches(binding_key, binding_key)
    assert topic_matches(binding_key, routing_key) == (binding_key == routing_key)


@given(st.text())
def test_a_lone_hash_matches_every_routing_key(routing_key: str) -> None:
    assert topic_matches("#", routing_key)
    assert topic_matches("#.#", routing_key)


@given(st.lists(words, min_size=1, max_size=6))
def test_a_binding_key_of_n_stars_matches_every_key_of_n_words(routed: list[str]) -> None:
    assume(routed != [""])
    stars = join(["*"] * len(routed))
    assert topic_matches(stars, join(routed))
    assert not topic_matches(stars + ".*", join(routed))


@given(binding_tokens, routing_words)
def test_topic_matching_gives_the_same_answer_when_asked_again(
    pattern: list[str], routing: list[str]
) -> None:
    binding_key, routing_key = join(pattern), join(routing)
    first = topic_matches(binding_key, routing_key)
    assert topic_matches(binding_key, routing_key) == first


# --------------------------------------------------------------------------------------------
# Topic: examples
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binding_key", "routing_key", "expected"),
    [
        ("#", "", True),
        ("#", "a", True),
        ("#", "a.b.c", True),
        ("#.#", "", True),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("a.#", "b.a", False),
        ("#.a", "a", True),
        ("#.a", "b.c.a", True),
        ("#.a", "a.b", False),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y", False),
        ("a.*.#", "a", False),
        ("a.*.#", "a.b", True),
        ("*", "", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("*.*", ".", True),
        ("*", ".", False),
        ("a.*", "a.", True),
        ("", "", True),
        ("", "a", False),
        ("a", "", False),
        ("a..b", "a..b", True),
        ("a.*.b", "a..b", True),
        ("a.b", "a..b", False),
        ("a.#.b", "a..b", True),
        ("a.b", "a.b", True),
        ("a.b", "A.b", False),
        ("a*", "ab", False),
        ("a*", "a*", True),
        ("#a", "a", False),
        ("#a", "#a", True),
        ("*.orders.*", "eu.orders.created", True),
        ("*.orders.*", "eu.orders", False),
    ],
)
def test_topic_matching_follows_amqp_word_semantics(
    binding_key: str, routing_key: str, expected: bool
) -> None:
    assert topic_matches(binding_key, routing_key) is expected


@pytest.mark.parametrize("binding_key", ["a.(b|c)+", "a.b?", "[ab].*", "a\\.b", "^a$", ".*"])
def test_regular_expression_characters_in_a_binding_key_are_plain_text(binding_key: str) -> None:
    assert topic_matches(binding_key.replace(".*", ".x"), binding_key.replace(".*", ".x"))
    assert not topic_matches(binding_key, "a.bc")
    assert not topic_matches(binding_key, "ab")


def test_the_acceptance_example_routes_eu_orders_to_the_eu_and_orders_queues_only() -> None:
    bindings = [
        BindingSpec("eu-everything", "eu.#"),
        BindingSpec("all-orders", "*.orders.*"),
        BindingSpec("us-everything", "us.#"),
    ]
    assert route("topic", bindings, "eu.orders.created") == ["eu-everything", "all-orders"]


def test_compiling_the_same_binding_key_twice_reuses_the_cached_matcher() -> None:
    assert _compile_topic("cache.*.#") is _compile_topic("cache.*.#")
    assert _compile_topic.cache_info().maxsize == 4096


# --------------------------------------------------------------------------------------------
# Direct and fanout
# --------------------------------------------------------------------------------------------


def test_direct_matching_is_exact_string_equality() -> None:
    assert direct_matches("a.b", "a.b")
    assert direct_matches("", "")
    assert not direct_matches("a.*", "a.b")
    assert not direct_matches("#", "a")
    assert not direct_matches("A", "a")


@pytest.mark.parametrize(("binding_key", "routing_key"), [("", ""), ("a", "b"), ("x", "")])
def test_fanout_matching_accepts_every_key(binding_key: str, routing_key: str) -> None:
    assert fanout_matches(binding_key, routing_key) is True


# --------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------


def test_all_requires_every_argument_to_match_a_header() -> None:
    arguments = {"x-match": "all", "format": "pdf", "type": "report"}
    assert headers_matches(arguments, {"format": "pdf", "type": "report"})
    assert headers_matches(arguments, {"format": "pdf", "type": "report", "extra": 1})
    assert not headers_matches(arguments, {"format": "pdf"})
    assert not headers_matches(arguments, {"format": "pdf", "type": "log"})


def test_any_requires_one_argument_to_match_a_header() -> None:
    arguments = {"x-match": "any", "format": "pdf", "type": "log"}
    assert headers_matches(arguments, {"format": "pdf"})
    assert headers_matches(arguments, {"format": "zip", "type": "log"})
    assert not headers_matches(arguments, {"format": "zip", "type": "report"})
    assert not headers_matches(arguments, {"other": "pdf"})


def test_a_binding_without_x_match_behaves_as_all() -> None:
    arguments = {"format": "pdf", "type": "report"}
    assert headers_matches(arguments, {"format": "pdf", "type": "report"})
    assert not headers_matches(arguments, {"format": "pdf"})


@pytest.mark.parametrize("mode", ["all", "any"])
def test_all_and_any_ignore_arguments_whose_name_starts_with_x(mode: str) -> None:
    arguments = {"x-match": mode, "x-tenant": "a", "format": "pdf"}
    assert headers_matches(arguments, {"format": "pdf"})
    assert headers_matches(arguments, {"format": "pdf", "x-tenant": "b"})


def test_all_with_x_also_requires_the_x_arguments() -> None:
    arguments = {"x-match": "all-with-x", "x-tenant": "a", "format": "pdf"}
    assert headers_matches(arguments, {"format": "pdf", "x-tenant": "a"})
    assert not headers_matches(arguments, {"format": "pdf"})
    assert not headers_matches(arguments, {"format": "pdf", "x-tenant": "b"})


def test_any_with_x_can_match_on_an_x_argument_alone() -> None:
    arguments = {"x-match": "any-with-x", "x-tenant": "a"}
    assert headers_matches(arguments, {"x-tenant": "a"})
    assert not headers_matches(arguments, {"x-tenant": "b"})
    assert not headers_matches({"x-match": "any", "x-tenant": "a"}, {"x-tenant": "a"})


@pytest.mark.parametrize("mode", ["all-with-x", "any-with-x"])
def test_the_x_match_argument_itself_is_never_compared_with_the_headers(mode: str) -> None:
    assert headers_matches({"x-match": mode, "format": "pdf"}, {"format": "pdf"})


def test_missing_headers_match_only_bindings_that_require_nothing() -> None:
    assert not headers_matches({"format": "pdf"}, None)
    assert not headers_matches({"x-match": "any", "format": "pdf"}, None)
    assert headers_matches({}, None)
    assert headers_matches({"x-match": "all", "x-ignored": 1}, None)
    assert headers_matches({"x-match": "all"}, {})


def test_any_with_no_comparable_arguments_matches_nothing() -> None:
    assert not headers_matches({"x-match": "any"}, {"format": "pdf"})
    assert not headers_matches({"x-match": "any", "x-tenant": "a"}, {"x-tenant": "a"})


def test_an_argument_without_a_value_only_requires_the_header_to_be_present() -> None:
    arguments = {"x-match": "all", "trace": None}
    assert headers_matches(arguments, {"trace": "anything"})
    assert headers_matches(arguments, {"trace": None})
    assert not headers_matches(arguments, {"other": "x"})
    assert headers_matches({"x-match": "any", "trace": None, "format": "pdf"}, {"trace": 0})


def test_header_values_compare_by_equality_whatever_their_type() -> None:
    arguments = {"retries": 3, "tags": ["a", "b"], "meta": {"k": 1}}
    assert headers_matches(arguments, {"retries": 3, "tags": ["a", "b"], "meta": {"k": 1}})
    assert not headers_matches(arguments, {"retries": "3", "tags": ["a", "b"], "meta": {"k": 1}})
    assert not headers_matches({"flag": "yes"}, {"flag": None})


@pytest.mark.parametrize("mode", ["some", "ALL", "all ", "", None, 1, b"all"])
def test_an_invalid_x_match_raises_a_value_error_naming_the_valid_values(mode: object) -> None:
    with pytest.raises(ValueError, match="x-match") as caught:
        headers_matches({"x-match": mode, "format": "pdf"}, {"format": "pdf"})
    for valid in ("'all'", "'any'", "'all-with-x'", "'any-with-x'"):
        assert valid in str(caught.value)


def test_an_invalid_x_match_is_reported_even_without_headers() -> None:
    with pytest.raises(ValueError, match="x-match"):
        headers_matches({"x-match": "none"}, None)


header_names = st.sampled_from(["a", "b", "c", "x-a", "x-b"])
header_values = st.one_of(st.integers(min_value=0, max_value=2), st.sampled_from(["p", "q"]))


@given(
    st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"]),
    st.dictionaries(header_names, st.one_of(st.none(), header_values), max_size=4),
    st.one_of(st.none(), st.dictionaries(header_names, header_values, max_size=5)),
)
def test_headers_matching_agrees_with_the_reference_definition(
    mode: str | None, arguments: dict[str, Any], headers: dict[str, Any] | None
) -> None:
    if mode is not None:
        arguments = {"x-match": mode, **arguments}
    assert headers_matches(arguments, headers) == reference_headers(arguments, headers)


@given(
    st.sampled_from(["all", "any"]),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), header_values, min_size=1, max_size=3),
)
def test_headers_equal_to_the_binding_arguments_always_match(
    mode: str, arguments: dict[str, Any]
) -> None:
    assert headers_matches({"x-match": mode, **arguments}, arguments)


# --------------------------------------------------------------------------------------------
# route
# --------------------------------------------------------------------------------------------


def test_binding_spec_arguments_default_to_a_fresh_empty_mapping() -> None:
    first, second = BindingSpec("q", "k"), BindingSpec("q", "k")
    assert first.arguments == {}
    assert first.arguments is not second.arguments


def test_binding_spec_is_immutable() -> None:
    spec = BindingSpec("q", "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.queue = "other"  # type: ignore[misc]


def test_exchange_types_are_the_four_amqp_types() -> None:
    assert frozenset({"direct", "fanout", "topic", "headers"}) == EXCHANGE_TYPES


def test_a_queue_bound_twice_receives_the_message_once() -> None:
    bindings = [BindingSpec("q", "a.b"), BindingSpec("q", "a.b")]
    assert route("direct", bindings, "a.b") == ["q"]


def test_a_queue_matched_by_two_different_bindings_receives_the_message_once() -> None:
    bindings = [BindingSpec("q", "a.*"), BindingSpec("q", "#"), BindingSpec("r", "a.b")]
    assert route("topic", bindings, "a.b") == ["q", "r"]


def test_queues_come_in_the_order_of_their_first_matching_binding() -> None:
    bindings = [
        BindingSpec("late", "x.#"),
        BindingSpec("second", "a.#"),
        BindingSpec("first", "#"),
        BindingSpec("second", "#"),
        BindingSpec("late", "#"),
    ]
    assert route("topic", bindings, "a.b") == ["second", "first", "late"]


def test_fanout_sends_to_every_bound_queue_whatever_the_key() -> None:
    bindings = [BindingSpec("a", "x"), BindingSpec("b", ""), BindingSpec("a", "y")]
    assert route("fanout", bindings, "anything") == ["a", "b"]
    assert route("fanout", bindings, "") == ["a", "b"]


def test_direct_sends_only_to_queues_bound_with_exactly_the_key() -> None:
    bindings = [
        BindingSpec("exact", "tasks.default"),
        BindingSpec("pattern", "tasks.*"),
        BindingSpec("other", "tasks"),
    ]
    assert route("direct", bindings, "tasks.default") == ["exact"]
    assert route("direct", bindings, "tasks.Default") == []


def test_headers_routing_uses_the_binding_arguments_and_ignores_the_routing_key() -> None:
    bindings = [
        BindingSpec("pdf", "ignored", {"x-match": "all", "format": "pdf"}),
        BindingSpec("reports", "", {"x-match": "any", "type": "report", "format": "doc"}),
        BindingSpec("zip", "", {"format": "zip"}),
    ]
    headers = {"format": "pdf", "type": "report"}
    assert route("headers", bindings, "unrelated", headers) == ["pdf", "reports"]
    assert route("headers", bindings, "ignored") == []


def test_routing_with_nothing_matching_returns_an_empty_list() -> None:
    assert route("topic", [BindingSpec("q", "a.*")], "b.c") == []
    assert route("fanout", [], "k") == []


def test_route_accepts_any_iterable_of_bindings() -> None:
    def bindings() -> Iterator[BindingSpec]:
        yield BindingSpec("one", "k")
        yield BindingSpec("two", "k")

    assert route("direct", bindings(), "k") == ["one", "two"]


@pytest.mark.parametrize("exchange_type", ["x-delayed-message", "Direct", ""])
def test_an_unknown_exchange_type_raises_a_value_error_naming_the_valid_types(
    exchange_type: str,
) -> None:
    with pytest.raises(ValueError, match="exchange type") as caught:
        route(exchange_type, [], "k")
    for valid in ("'direct'", "'fanout'", "'topic'", "'headers'"):
        assert valid in str(caught.value)


def test_an_invalid_x_match_raises_when_routing_through_a_headers_exchange() -> None:
    with pytest.raises(ValueError, match="x-match"):
        route("headers", [BindingSpec("q", "", {"x-match": "most"})], "", {})


@given(st.lists(st.tuples(st.sampled_from(["q1", "q2", "q3"]), raw_keys), max_size=6), raw_keys)
def test_topic_routing_is_the_deduplicated_list_of_matching_bindings(
    pairs: list[tuple[str, str]], routing_key: str
) -> None:
    bindings = [BindingSpec(queue, key) for queue, key in pairs]
    expected = list(
        dict.fromkeys(queue for queue, key in pairs if reference_topic(key, routing_key))
    )
    assert route("topic", bindings, routing_key) == expected
