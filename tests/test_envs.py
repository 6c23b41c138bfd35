"""Gym Cards rules (exact rewards, termination, truncation), prompts, registration, policies, corpus."""

from __future__ import annotations

import random
import re

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.cards import evaluate, solutions
from envs.policies import habit_move, make_policy


def act(a: str) -> str:
    return envs.format_action(a)


def play(env, actions):
    """Step a list of actions; returns the list of (reward, terminated, truncated)."""
    out = []
    for a in actions:
        _, r, term, trunc, info = env.step(act(a))
        out.append((r, term, trunc))
    return out, info


# ---- NumberLine ------------------------------------------------------------------------------


def test_numberline_wall_bump_then_reach_goal():
    env = envs.make_env("numberline", obs_mode="text")
    obs, _ = env.reset(seed=11)
    assert (env.pos, env.goal) == (0, 1) and obs.text == "Target: 1. Current: 0."
    steps, info = play(env, ["-", "+"])  # bump the wall at 0: -1, then reach the goal: +1
    assert steps == [(-1.0, False, False), (1.0, True, False)]
    assert info["goal_reached"] and not info["success"]  # return 0 is not a success (RL4VLM)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(act("+"))


def test_numberline_wasted_moves_and_truncation():
    env = envs.make_env("numberline", obs_mode="text")
    env.reset(seed=0)
    assert (env.pos, env.goal) == (5, 3)
    steps, _ = play(env, ["+", "-", "+", "-"])  # wall bump at 5 (-1), closer (0), away (-1), closer (0)
    assert [s[0] for s in steps] == [-1.0, 0.0, -1.0, 0.0]
    steps, info = play(env, ["+", "-", "+", "-", "+", "-"])  # steps 5..10: truncated at the 10th turn
    assert steps[-1] == (0.0, False, True) and not any(s[2] for s in steps[:-1])
    assert info["episode_return"] == -5.0 and not info["success"]


def test_numberline_direct_path_is_a_success():
    env = envs.make_env("numberline", obs_mode="text")
    env.reset(seed=2)
    assert (env.pos, env.goal) == (5, 1)
    steps, info = play(env, ["-"] * 4)
    assert steps == [(0.0, False, False)] * 3 + [(1.0, True, False)]
    assert info["success"] and info["goal_reached"]


def test_numberline_reset_distribution():
    env = envs.make_env("numberline", obs_mode="text")
    seen = set()
    for s in range(300):
        env.reset(seed=s)
        assert 0 <= env.pos <= 5 and 0 <= env.goal <= 5 and env.pos != env.goal
        seen.add((env.pos, env.goal))
    assert len(seen) >= 25


def test_syntax_error_keeps_state_and_counts_toward_time_limit():
    env = envs.make_env("numberline", obs_mode="text", syntax_penalty=-0.5)
    obs0, _ = env.reset(seed=0)
    for t in range(10):
        obs, r, term, trunc, info = env.step("move right please")
        assert r == -0.5 and not term and obs.text == obs0.text
        assert info["syntax_ok"] is False and info["action"] is None
        assert trunc == (t == 9)


def test_max_steps_overrides_time_limit():
    env = envs.make_env("numberline", obs_mode="text", max_steps=3)
    env.reset(seed=0)
    steps, _ = play(env, ["+", "+", "+"])
    assert [s[2] for s in steps] == [False, False, True]


def test_seed_determinism_and_images():
    for env_id in ("numberline", "ezpoints", "points24", "blackjack"):
        a, b = envs.make_env(env_id), envs.make_env(env_id)
        oa, _ = a.reset(seed=7)
        ob, _ = b.reset(seed=7)
        assert oa.image.shape == (300, 300, 3) and oa.image.dtype == np.uint8
        assert np.array_equal(oa.image, ob.image) and oa.text == ob.text
        a.reset()  # unseeded resets continue the seeded stream
        b.reset()
        assert a._obs_text(True) == b._obs_text(True)


# ---- EZPoints / Points24 --------------------------------------------------------------------


def test_ezpoints_deal_rule():
    env = envs.make_env("ezpoints", obs_mode="text")
    products = 0
    for s in range(400):
        env.reset(seed=s)
        c1, c2 = env.cards
        assert 2 <= min(env.cards) and max(env.cards) <= 10
        assert c1 + c2 == 12 or c1 * c2 == 12
        products += c1 * c2 == 12 and c1 + c2 != 12
    assert 20 < products < 200


def test_ezpoints_rules():
    env = envs.make_env("ezpoints", obs_mode="text")
    obs, _ = env.reset(seed=0)
    assert env.cards == [2, 10] and obs.text == "Cards: 2, 10. Formula: (empty)."
    steps, _ = play(env, ["2", "2", "7"])  # card reuse and a number not on the cards: -1, formula unchanged
    assert steps == [(0.0, False, False), (-1.0, False, False), (-1.0, False, False)]
    assert env.formula == ["2"]
    steps, info = play(env, ["+", "10", "="])
    assert steps[-1] == (10.0, True, False) and info["goal_reached"] and info["success"]

    env.reset(seed=0)
    steps, info = play(env, ["2", "*", "10", "="])  # 20: wrong
    assert steps[-1] == (-1.0, True, False) and not info["goal_reached"]


def test_ezpoints_formula_cap_counts_rejected_numbers():
    env = envs.make_env("ezpoints", obs_mode="text")
    env.reset(seed=0)
    steps, _ = play(env, ["+"] * 6 + ["="])  # formula of 6 > 5 before the 7th step: -1 and truncate
    assert steps[:6] == [(0.0, False, False)] * 6 and steps[6] == (-1.0, False, True)
    env.reset(seed=0)
    steps, _ = play(
        env, ["2", "2", "2", "2", "+", "+", "+"]
    )  # 1 token + 3 rejected + 2 = 6: the 7th truncates
    assert steps[-1] == (-1.0, False, True) and env.formula == ["2", "+", "+"]


def test_points24_rules():
    env = envs.make_env("points24", obs_mode="text")
    env.reset(seed=1)
    assert env.cards == [7, 7, 10, 10]
    env.cards = [3, 3, 8, 8]  # exact division: 8 / (3 - 8 / 3) is 24
    steps, info = play(env, ["8", "/", "(", "3", "-", "8", "/", "3", ")", "="])
    assert steps[-1] == (10.0, True, False) and info["success"]
    env.reset(seed=1)
    env.cards = [6, 4, 1, 1]
    steps, _ = play(env, ["6", "*", "4", "="])  # 24 but two cards unused
    assert steps[-1] == (-1.0, True, False)
    env.reset(seed=1)
    env.cards = [1, 2, 4, 1]
    steps, _ = play(env, ["2", "4", "="])  # numbers never concatenate into 24
    assert steps[-1] == (-1.0, True, False)
    env.reset(seed=1)
    steps, _ = play(env, ["("] * 21 + [")"])  # cap 20
    assert steps[-1] == (-1.0, False, True) and steps[-2] == (0.0, False, False)


def test_points24_face_cards_option():
    env = envs.make_env("points24", obs_mode="text", face_cards_as_10=False)
    env.reset(seed=0)
    assert "13" in env.legal_actions() and env.cards == [12, 9, 7, 4]


def test_evaluate_and_solver():
    assert evaluate(["8", "/", "(", "3", "-", "8", "/", "3", ")"]) == 24
    assert evaluate(["1", "/", "0"]) is None and evaluate(["(", "2"]) is None and evaluate(["2", "4"]) is None
    assert evaluate(["2", "+", "3", "*", "4"]) == 14 and evaluate(["1", "-", "2", "-", "3"]) == -4
    for sol in solutions([3, 3, 8, 8], 24, "+-*/", True):
        assert evaluate(sol) == 24 and sorted(t for t in sol if t.isdigit()) == ["3", "3", "8", "8"]
    assert not list(solutions([1, 1, 1, 1], 24, "+-*/", True))


# ---- Blackjack ------------------------------------------------------------------------------


def blackjack(player, dealer, draws):
    """A blackjack env with hands and the next cards set by hand."""
    env = envs.make_env("blackjack", obs_mode="text")
    env.reset(seed=0)
    env.player = [(v, str(v), 0) for v in player]
    env.dealer = [(v, str(v), 0) for v in dealer]
    queue = iter(draws)
    env._draw = lambda: (v := next(queue), str(v), 0)
    return env


@pytest.mark.parametrize(
    "player, dealer, draws, actions, expected",
    [
        ([10, 9], [10, 7], [], ["stand"], [(1.0, True)]),  # 19 beats 17; the dealer stands on 17
        ([10, 7], [10, 7], [], ["stand"], [(0.0, True)]),  # push
        ([10, 6], [10, 6], [5], ["stand"], [(-1.0, True)]),  # the dealer draws to 21
        ([10, 6], [10, 6], [10], ["stand"], [(1.0, True)]),  # the dealer busts
        ([10, 2], [10, 7], [10], ["hit"], [(-1.0, True)]),  # the player busts with 22
        ([1, 6], [1, 6], [], ["stand"], [(0.0, True)]),  # soft 17 each: the dealer stands on soft 17
        # A+5 is soft 16; +10 is hard 16, +4 is 20 (no bust), 20 beats 17
        ([1, 5], [10, 7], [10, 4], ["hit", "hit", "stand"], [(0.0, False), (0.0, False), (1.0, True)]),
    ],
)
def test_blackjack_rules(player, dealer, draws, actions, expected):
    env = blackjack(player, dealer, draws)
    steps, info = play(env, actions)
    assert [(r, term) for r, term, _ in steps] == expected
    assert info["success"] == (expected[-1][0] > 0)


def test_blackjack_soft_total_and_text():
    env = blackjack([1, 7], [9, 7], [])
    assert env.total(env.player) == (18, True)
    assert env.observe().text == "Dealer shows: 9. Your cards: 1, 7 (total 18, soft)."


def run_policy(env_id, spec, episodes, seed=0, **kw):
    env = envs.make_env(env_id, obs_mode="text", **kw)
    policy, rng = make_policy(spec), np.random.default_rng(seed)
    returns, successes = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 100_000 + ep)
        done = False
        while not done:
            text = policy.act(obs.legal_actions, env.expert_action(), rng, env.format_action)
            obs, _, term, trunc, info = env.step(text)
            done = term or trunc
        returns.append(info["episode_return"])
        successes.append(info["success"])
    return np.mean(returns), np.mean(successes)


def test_experts():
    assert run_policy("numberline", "expert", 300)[1] == 1.0
    assert run_policy("ezpoints", "expert", 300)[1] == 1.0
    expert_ret, _ = run_policy("blackjack", "expert", 2000)
    random_ret, _ = run_policy("blackjack", "random", 2000)
    assert expert_ret > random_ret + 0.15, (expert_ret, random_ret)
    assert -0.15 < expert_ret < 0.0  # basic strategy loses a little to the house


def test_points24_expert_solves_every_solvable_deal():
    env = envs.make_env("points24", obs_mode="text")
    solvable = solved = 0
    for s in range(60):
        env.reset(seed=s)
        can = bool(next(solutions(env.cards, 24, "+-*/", True), None))
        done = False
        while not done:
            _, _, term, trunc, info = env.step(act(env.expert_action()))
            done = term or trunc
        solvable += can
        solved += info["success"]
        assert info["success"] == can
    assert solvable > 30


# ---- prompts, modes, registration ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["image", "text", "both"])
def test_prompt_modes(mode):
    env = envs.make_env("numberline", obs_mode=mode)
    obs, _ = env.reset(seed=11)
    messages, images = env.prompt(obs)
    content = messages[0]["content"]
    text = content[-1]["text"]
    assert messages[0]["role"] == "user"
    assert ('"action"' in text) and "Actions:" in text
    assert ("Target: 1. Current: 0." in text) == (mode != "image")
    assert (content[0] == {"type": "image"}) == (mode != "text") and len(images) == (mode != "text")
    if images:
        assert images[0].shape == (300, 300, 3)
    assert len(re.findall(r"\w+|[^\w\s]", text)) < 100  # short: the tiny model's context is small


def test_prompt_history():
    env = envs.make_env("numberline", obs_mode="text", history=2)
    obs, _ = env.reset(seed=0)
    history = [("Target: 3. Current: 5.", act("+")), ("Target: 3. Current: 5.", act("-")), ("T4", act("-"))]
    text = env.prompt(obs, history)[0][0]["content"][-1]["text"]
    assert "Earlier turns:" in text and "T4" in text and text.count("Answer:") == 2  # the last 2 turns
    assert text.endswith("Target: 3. Current: 5.")
    env0 = envs.make_env("numberline", obs_mode="text")
    env0.reset(seed=0)
    assert "Earlier" not in env0.prompt(obs, history)[0][0]["content"][-1]["text"]


@pytest.mark.parametrize("env_id", ["numberline", "ezpoints", "points24", "blackjack"])
def test_demo_puts_worked_turns_with_distinct_expert_moves_before_every_prompt(env_id):
    plain = envs.make_env(env_id, obs_mode="both")
    env = envs.make_env(env_id, obs_mode="both", demo=2)
    shown = envs.make_env(env_id, obs_mode="text")
    expected, moves = [], []  # the first seeds from DEMO_SEED whose expert move is new
    for seed in range(envs.base.DEMO_SEED, envs.base.DEMO_SEED + 100):
        obs, _ = shown.reset(seed=seed)
        if shown.expert_action() not in moves and len(moves) < 2:
            moves.append(shown.expert_action())
            expected.append((shown.prompt(obs)[0][0]["content"][-1]["text"], envs.format_action(moves[-1])))
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        plain_messages, plain_images = plain.prompt(plain.reset(seed=seed)[0])
        messages, images = env.prompt(obs)
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2 + ["user"]
        shown_turns = [(messages[i]["content"], messages[i + 1]["content"]) for i in (0, 2)]
        assert shown_turns == [
            ([{"type": "text", "text": u}], [{"type": "text", "text": a}]) for u, a in expected
        ]
        assert [env.parse_agent(a) for _, a in expected] == moves  # well formed
        assert len(set(moves)) == 2  # distinct
        assert messages[4:] == plain_messages  # the turn as without
        assert len(images) == len(plain_images) == 1  # worked turns are words only
    assert envs.make_env(env_id).demo == []  # off by default
    with pytest.raises(ValueError, match="distinct moves"):
        envs.make_env("numberline", obs_mode="text", demo=3)  # NumberLine has two moves


def test_episode_example_draws_the_syntax_examples_action_per_seed_and_leaves_the_game_alone():
    fixed = envs.make_env("numberline", obs_mode="text")
    env = envs.make_env("numberline", obs_mode="text", example="episode")
    shown = set()
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        action = random.Random(seed).choice(sorted(obs.legal_actions))
        example = f'Answer in JSON: {{"thoughts": "...", "action": "{action}"}}'
        assert example in env.prompt(obs)[0][-1]["content"][-1]["text"]
        assert obs.text == fixed.reset(seed=seed)[0].text  # the same deal
        later = env.step(envs.format_action("-" if action == "+" else "+"))[0]
        assert example in env.prompt(later)[0][-1]["content"][-1]["text"]  # kept for the whole episode
        shown.add(action)
    assert shown == {"+", "-"}
    assert (
        fixed.example_action == "+"
        and '"action": "+"}' in fixed.prompt(fixed.reset(seed=1)[0])[0][0]["content"][0]["text"]
    )
    with pytest.raises(ValueError, match="example 'sometimes'"):
        envs.make_env("numberline", example="sometimes")


def test_episode_example_with_worked_turns_shows_one_drawn_per_episode_and_names_its_move():
    pool = envs.make_env("numberline", obs_mode="text", demo=2)
    both = pool.prompt(pool.reset(seed=0)[0])[0][:4]  # fixed: both worked turns, in order
    env = envs.make_env("numberline", obs_mode="text", demo=2, example="episode")
    moves = set()
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        messages = env.prompt(obs)[0]
        move = random.Random(seed).choice(["+", "-"])  # the pool is the + turn, then the - one
        assert len(messages) == 3 and messages[1]["content"][0]["text"] == envs.format_action(move)
        assert f'"action": "{move}"}}\n' in messages[2]["content"][0]["text"]  # the example names it
        moves.add(move)
    assert moves == {"+", "-"}
    assert [pool.parse_agent(m["content"][0]["text"]) for m in both[1::2]] == ["+", "-"]


def test_gym_registration():
    env = gym.make("vlmq/NumberLine-v0", obs_mode="text")
    obs, info = env.reset(seed=11)
    assert obs.text == "Target: 1. Current: 0." and info["syntax_ok"]
    _, r, term, _, _ = env.step(act("+"))
    assert r == 1.0 and term
    for name in ("vlmq/EZPoints-v0", "vlmq/Points24-v0", "vlmq/Blackjack-v0"):
        obs, _ = gym.make(name).reset(seed=0)
        assert obs.image.shape == (300, 300, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown env id"):
        envs.make_env("numberlin")
    with pytest.raises(ValueError, match="obs_mode"):
        envs.make_env("numberline", obs_mode="pixels")
    env = envs.make_env("numberline")
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(act("+"))
    env.reset(seed=0)
    with pytest.raises(TypeError, match="output text"):
        env.step(1)
    for spec in (
        "greedy",
        "epsilon",
        "epsilon:2",
        "malformed:x",
        "random:1",
        "habit:0.5",
        "habit:1:2",
        "habit:1:1:1:1",
    ):
        with pytest.raises(ValueError, match="policy"):
            make_policy(spec)


# ---- policies and the corpus ------------------------------------------------------------------


def test_policies():
    env = envs.make_env("ezpoints", obs_mode="text")
    obs, _ = env.reset(seed=0)
    rng = random.Random(0)  # a random.Random works as well as a numpy Generator
    legal = obs.legal_actions
    outs = [make_policy("random").act(legal, "2", rng, env.format_action) for _ in range(300)]
    assert {env.parse_agent(o) for o in outs} == set(legal)
    assert make_policy("expert").act(legal, "2", rng, env.format_action) == act("2")
    assert make_policy("epsilon:0").act(legal, "2", rng, env.format_action) == act("2")
    eps = [
        env.parse_agent(make_policy("epsilon:0.5").act(legal, "2", rng, env.format_action))
        for _ in range(400)
    ]
    assert 0.45 < np.mean([a == "2" for a in eps]) < 0.65
    bad = [make_policy("malformed:1").act(legal, "2", rng, env.format_action) for _ in range(300)]
    assert all(env.parse_agent(o) is None for o in bad) and len(set(bad)) > 20
    cut = [o for o in bad if o and any(act(a).startswith(o) and o != act(a) for a in legal)]
    assert len({len(o) for o in cut}) > 5  # the well-formed answer cut off at many places
    half = [
        env.parse_agent(make_policy("malformed:0.5").act(legal, "2", rng, env.format_action))
        for _ in range(400)
    ]
    assert 0.4 < np.mean([a is None for a in half]) < 0.6
    # the noisy expert: a share m malformed; of the rest, the expert's move with p = 0.5 exploring
    noisy = [
        env.parse_agent(make_policy("epsilon:0.5:0.3").act(legal, "2", rng, env.format_action))
        for _ in range(1000)
    ]
    assert 0.25 < np.mean([a is None for a in noisy]) < 0.35
    formed = [a for a in noisy if a is not None]
    share = 0.5 + 0.5 / len(legal)  # the expert's move, chosen or explored onto
    assert share - 0.07 < np.mean([a == "2" for a in formed]) < share + 0.07


def test_habit_policy_errs_the_same_way_in_the_same_state():
    """habit:<f>:<p>: a share f of states has one wrong move, fixed per state, played with probability
    p; every other state gets the expert. So the habit is its state's most frequent move (p > 1/2)."""
    env = envs.make_env("ezpoints", obs_mode="text")
    legal = env.reset(seed=0)[0].legal_actions
    rng = np.random.default_rng(0)
    policy = make_policy("habit:0.5:0.8")
    states = [f"Cards: {a}, {b}. Formula: (empty)." for a in range(1, 11) for b in range(1, 11)]
    habits = {s: habit_move(legal, "2", s, 0.5) for s in states}
    assert 0.35 < np.mean([h is not None for h in habits.values()]) < 0.65  # about a share f of states
    assert all(h is None or (h in legal and h != "2") for h in habits.values())
    assert len({h for h in habits.values() if h}) > 3  # the wrong move differs from state to state
    for s, h in list(habits.items())[:20]:
        moves = [env.parse_agent(policy.act(legal, "2", rng, env.format_action, state=s)) for _ in range(200)]
        if h is None:
            assert set(moves) == {"2"}
        else:
            assert set(moves) == {h, "2"} and 0.72 < moves.count(h) / 200 < 0.88
    assert habit_move(legal, "2", states[0], 1.0) == habit_move(legal, "2", states[0], 1.0) is not None
    assert habit_move(legal, "2", states[0], 0.0) is None
    # m: malformed first, as in epsilon
    always = make_policy("habit:1:1:0.3")
    broken = [
        env.parse_agent(always.act(legal, "2", rng, env.format_action, state=states[0])) for _ in range(1000)
    ]
    assert 0.25 < np.mean([a is None for a in broken]) < 0.35
    assert {a for a in broken if a is not None} == {habit_move(legal, "2", states[0], 1.0)}


def test_malformed_policy_is_a_syntax_error_in_every_card_env():
    rng = np.random.default_rng(0)
    for env_id in envs.CARD_ENVS:
        env = envs.make_env(env_id, obs_mode="text")
        obs, _ = env.reset(seed=0)
        for _ in range(5):
            text = make_policy("malformed:1").act(
                obs.legal_actions, env.expert_action(), rng, env.format_action
            )
            obs, r, *_, info = env.step(text)
            assert not info["syntax_ok"] and r == -1.0


def test_vocab_corpus():
    corpus = envs.vocab_corpus()
    assert corpus == envs.vocab_corpus()
    joined = "\n".join(corpus)
    for word in (
        "NumberLine",
        "EZPoints",
        "Points24",
        "Blackjack",
        "BabyAI",
        "MiniWoB",
        "click('",
        "Target: ",
    ):
        assert word in joined
    assert all(isinstance(t, str) for t in corpus) and len(corpus) > 500
