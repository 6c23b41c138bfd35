"""parse_agent: arbitrary text never crashes it, and the last "action" value must name one legal action
exactly (the parsing rule of docs/envs.md)."""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs import format_action, parse_action
from envs.base import MAX_OUTPUT_CHARS

LEGAL_SETS = [
    ["-", "+"],
    ["stand", "hit"],
    [*map(str, range(1, 11)), "+", "*", "="],
    [*map(str, range(1, 14)), "+", "-", "*", "/", "(", ")", "="],
    ["left", "right", "forward", "pickup", "drop", "toggle", "done"],
    ["click('1')", "click('13')", "click('a2')"],
]
legal_sets = st.sampled_from(LEGAL_SETS)
junk = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
invisible = st.characters(whitelist_categories=("Mn", "Cf"))  # combining marks, zero-width and format


@settings(max_examples=300, deadline=None)
@given(legal=legal_sets, text=junk)
def test_arbitrary_text_never_crashes(legal, text):
    assert parse_action(text, legal) in (None, *legal)


@settings(max_examples=300, deadline=None)
@given(legal=legal_sets, prefix=junk, value=junk, suffix=junk)
def test_a_json_value_is_read_exactly(legal, prefix, value, suffix):
    """Whatever surrounds it, a JSON-quoted last value is played iff it is a legal action (up to ASCII
    whitespace and case)."""
    text = f'{prefix}"action": {json.dumps(value)}{suffix}'
    named = [a for a in legal if value.strip(" \t\n\r\x0b\x0c").lower() == a.lower() and value.isascii()]
    if len(re.findall(r'"action"\s*:', text, re.IGNORECASE)) == 1:  # else a later key wins
        assert parse_action(text, legal) == (named[0] if named else None)


@settings(max_examples=200, deadline=None)
@given(legal=legal_sets, data=st.data(), thoughts=junk)
def test_well_formed_output_roundtrips(legal, data, thoughts):
    a = data.draw(st.sampled_from(legal))
    # thoughts may name other actions: only the "action" value counts
    assert parse_action(format_action(a, thoughts=thoughts), legal) == a
    assert parse_action(f"Let me think. {thoughts}\n{format_action(a)}", legal) == a


@settings(max_examples=300, deadline=None)
@given(legal=legal_sets, data=st.data(), thoughts=st.none() | junk)
def test_an_answer_cut_inside_its_value_is_malformed(legal, data, thoughts):
    """`{"action": "1` is not 1 when 10 may have been meant: every strict prefix that ends before the
    value's closing quote is malformed; once the value is closed, the missing `}` does not matter."""
    a = data.draw(st.sampled_from(legal))
    answer = format_action(a, thoughts=thoughts)
    closing = len(answer) - 2  # the value's closing quote: the answer ends with `"}`
    cut = data.draw(st.integers(0, len(answer) - 1))
    assert parse_action(answer[:cut], legal) == (a if cut > closing else None)


def test_examples():
    ez, bj = LEGAL_SETS[2], ["stand", "hit"]
    assert parse_action('{"action": "10"}', ez) == "10"
    assert parse_action('{"action": "1"}', ez) == "1"
    assert parse_action('{"action": "1', ez) is None  # cut off: 10 may have been meant
    assert parse_action('{"action": "Hit"}', bj) == "hit"  # case-insensitive
    assert parse_action('{"action": " HIT\\n"}', bj) == "hit"  # surrounding whitespace (here JSON-escaped)
    assert parse_action('"action": hit }', bj) == "hit"  # bare value, ended by `}`
    assert parse_action('"action": hit\nmore text', bj) == "hit"  # ... or a newline
    assert parse_action('"action": hit', bj) is None  # a bare value that runs to the end is cut off
    assert parse_action('{"action": 10}', ez) == "10"
    assert parse_action('{"action": "white"}', bj) is None
    assert parse_action("hit", bj) is None  # no "action" key
    assert parse_action('{"action": ""}', bj) is None
    assert parse_action('{"action": "click(\'13\')"}', LEGAL_SETS[5]) == "click('13')"
    assert parse_action('{"action": "click(\'14\')"}', LEGAL_SETS[5]) is None
    assert parse_action('{"action": "\\u002b"}', ["-", "+"]) == "+"  # a JSON escape is decoded
    assert parse_action('{"action": "\\q"}', ["-", "+"]) is None  # not a JSON string


@pytest.mark.parametrize(
    "value",
    [
        '"don\'t hit"',
        '"I will hit"',
        '"hit!"',
        '"hit or stand"',
        '"hit\u200b"',  # zero-width space
        '"hi\u0301t"',  # combining acute accent
        '"\u017ftand"',  # long s: case-folds to "stand", but it is not an ASCII letter
        '"\uff48\uff49\uff54"',  # fullwidth "hit"
        '"\\u0068it\\u200b"',  # the same, JSON-escaped
    ],
)
def test_the_value_must_name_the_action_exactly(value):
    assert parse_action(f'{{"action": {value}}}', ["stand", "hit"]) is None


@pytest.mark.parametrize("value", ["1e+308", "1.0", "+1", "010", "0x2b", "Infinity", "null", "true"])
def test_a_number_is_read_as_written_not_as_its_value(value):
    legal = [*LEGAL_SETS[3], "1"]
    assert parse_action(f'{{"action": {value}}}', legal) is None
    assert parse_action(f'{{"action": "{value}"}}', legal) is None


@settings(max_examples=300, deadline=None)
@given(legal=legal_sets, data=st.data(), mark=invisible)
def test_an_invisible_character_makes_the_value_malformed(legal, data, mark):
    a = data.draw(st.sampled_from(legal))
    i = data.draw(st.integers(0, len(a)))
    assert parse_action(format_action(a[:i] + mark + a[i:]), legal) is None


@settings(max_examples=200, deadline=None)
@given(legal=legal_sets, data=st.data())
def test_the_last_action_key_wins(legal, data):
    a, b = data.draw(st.lists(st.sampled_from(legal), min_size=2, max_size=2, unique=True))
    assert parse_action(f'{{"action": "{a}", "action": "{b}"}}', legal) == b  # as JSON parsers read it
    assert parse_action(f'{{"action": "{a}"}} {{"action": "{b}"}}', legal) == b
    assert parse_action(f'{{"action": "jump"}} {{"action": "{a}"}}', legal) == a
    assert parse_action(f'{{"action": "{a}"}} {{"action": "jump"}}', legal) is None
    assert parse_action(f'{{"action": "{a}"}} {{"action": "{b}', legal) is None  # the last is cut off
    assert parse_action(f'{{"action": "{a} {b}"}}', legal) is None
    assert parse_action(f'{{"action": "{a}"}} {{"action": "{a}"}}', legal) == a


def test_an_output_over_the_bound_is_rejected_unread():
    answer = format_action("hit")
    at_bound = " " * (MAX_OUTPUT_CHARS - len(answer)) + answer
    assert parse_action(at_bound, ["stand", "hit"]) == "hit"
    assert parse_action(" " + at_bound, ["stand", "hit"]) is None
    assert parse_action(answer, ["stand", "hit"], max_chars=len(answer) - 1) is None
    huge = "x" * 1_000_000 + answer  # 1 MB: it took 1.5 s to parse when it was read
    t0 = time.process_time()
    for _ in range(100):
        assert parse_action(huge, ["stand", "hit"]) is None
    assert (time.process_time() - t0) / 100 < 0.005


@pytest.mark.parametrize(
    "text",
    [
        '"action": ' * 400,
        '{"action": "' + "\\\\" * 2000,
        '{"action": "' + "\\a" * 2000,
        '"action": "x", ' * 270,
        "{" * MAX_OUTPUT_CHARS,
    ],
)
def test_the_worst_output_within_the_bound_parses_fast(text):
    text = text[:MAX_OUTPUT_CHARS]
    t0 = time.process_time()
    for _ in range(20):
        parse_action(text, LEGAL_SETS[3])
    assert (time.process_time() - t0) / 20 < 0.01


@pytest.mark.parametrize("env_id", [*envs.CARD_ENVS, "babyai:GoToLocal"])
def test_env_bound_is_its_action_space_length(env_id):
    env = envs.make_env(env_id, obs_mode="text")
    obs, _ = env.reset(seed=0)
    a = obs.legal_actions[0]
    assert env.action_space.max_length == env.max_output_chars
    padded = env.format_action(a, thoughts="x" * env.max_output_chars)[-env.max_output_chars :]
    assert env.parse_agent(padded) == a  # the thoughts' cut-off start is text before the answer
    _, r, _, _, info = env.step(" " + padded)
    assert not info["syntax_ok"] and r == env.syntax_penalty


@settings(max_examples=100, deadline=None)
@given(text=junk)
def test_env_step_survives_any_text(text):
    env = envs.make_env("blackjack", obs_mode="text")
    obs, _ = env.reset(seed=0)
    obs2, r, term, trunc, info = env.step(text)
    assert info["syntax_ok"] == (info["action"] is not None)
    if not info["syntax_ok"]:
        assert r == -1.0 and obs2.text == obs.text and not term
