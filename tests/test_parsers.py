"""parse_agent: arbitrary text never crashes it, and exactly one legal action must be named."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs import format_action, parse_action

LEGAL_SETS = [
    ["-", "+"],
    ["stand", "hit"],
    [*map(str, range(1, 11)), "+", "*", "="],
    [*map(str, range(1, 11)), "+", "-", "*", "/", "(", ")", "="],
    ["left", "right", "forward", "pickup", "drop", "toggle", "done"],
    ["click('1')", "click('13')", "click('a2')"],
]
legal_sets = st.sampled_from(LEGAL_SETS)
junk = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(legal=legal_sets, text=junk)
def test_arbitrary_text_never_crashes(legal, text):
    assert parse_action(text, legal) in (None, *legal)


@settings(max_examples=300, deadline=None)
@given(legal=legal_sets, prefix=junk, value=junk, suffix=junk)
def test_result_is_named_after_action_key(legal, prefix, value, suffix):
    text = f'{prefix}"action": {json.dumps(value)}{suffix}'
    a = parse_action(text, legal)
    assert a is None or a in legal


@settings(max_examples=200, deadline=None)
@given(legal=legal_sets, data=st.data(), thoughts=junk)
def test_well_formed_output_roundtrips(legal, data, thoughts):
    a = data.draw(st.sampled_from(legal))
    # thoughts may name other actions: only the "action" value counts
    assert parse_action(format_action(a, thoughts=thoughts), legal) == a
    assert parse_action(f"Let me think. {thoughts}\n{format_action(a)}", legal) == a


@settings(max_examples=200, deadline=None)
@given(legal=legal_sets, data=st.data())
def test_two_different_actions_are_a_syntax_error(legal, data):
    a, b = data.draw(st.lists(st.sampled_from(legal), min_size=2, max_size=2, unique=True))
    assert parse_action(f'{{"action": "{a} {b}"}}', legal) is None
    assert parse_action(f'{{"action": "{a}"}} {{"action": "{b}"}}', legal) is None
    assert parse_action(f'{{"action": "{a}"}} {{"action": "{a}"}}', legal) == a


def test_examples():
    ez = LEGAL_SETS[2]
    assert parse_action('{"action": "10"}', ez) == "10"  # "1" is not found inside "10"
    assert parse_action('{"action": "1"}', ez) == "1"
    assert parse_action('{"action": "Hit"}', ["stand", "hit"]) == "hit"  # case-insensitive
    assert parse_action('"action": hit }', ["stand", "hit"]) == "hit"  # bare value
    assert parse_action('{"action": "white"}', ["stand", "hit"]) is None  # whole tokens only
    assert parse_action('{"action": "I will hit"}', ["stand", "hit"]) == "hit"
    assert parse_action("hit", ["stand", "hit"]) is None  # no "action" key
    assert parse_action('{"action": ""}', ["stand", "hit"]) is None
    assert parse_action('{"action": "click(\'13\')"}', LEGAL_SETS[5]) == "click('13')"
    assert parse_action('{"action": "click(\'14\')"}', LEGAL_SETS[5]) is None


@settings(max_examples=100, deadline=None)
@given(text=junk)
def test_env_step_survives_any_text(text):
    env = envs.make_env("blackjack", obs_mode="text")
    obs, _ = env.reset(seed=0)
    obs2, r, term, trunc, info = env.step(text)
    assert info["syntax_ok"] == (info["action"] is not None)
    if not info["syntax_ok"]:
        assert r == -1.0 and obs2.text == obs.text and not term
