"""Data-collection policies: they write the full output text a model would, for any env.

`make_policy(spec)` with spec `random | expert | epsilon:<p>[:<m>] | habit:<f>:<p>[:<m>] | malformed:<p>`:
- random: a uniformly random legal action.
- expert: the env's scripted expert (random where it has none).
- epsilon:<p>: random with probability p, else expert. epsilon:<p>:<m>: first, with probability m, a
  malformed output (as below), else the same: the noisy-expert data of envs where random play almost
  never succeeds.
- habit:<f>:<p>[:<m>]: errors a model makes consistently. In a share f of states (chosen by a hash of
  the state) the policy has a habit, one wrong legal move fixed per state, and plays it with
  probability p, else the expert; in the other states, the expert. With p > 1/2 the habit is the data's
  most frequent move in its state, so SFT copies it, while the data still shows the right move there
  (uniform epsilon noise leaves the expert every state's mode, and SFT recovers the expert).
  m: malformed outputs first, as in epsilon. The state is the prompt's text (`act(..., state=)`).
- malformed:<p>: with probability p an output that fails the syntax check the way base models fail
  (half of them the well-formed answer cut off anywhere; else prose, wrong key, an action that is not
  legal, two actions, a cut-off answer, nothing); else random. The cut-offs teach a critic what an
  early end of turn costs at every position of the format, which a clean dataset never shows
  (docs/driver.md).
`rng` is a `numpy.random.Generator` or a `random.Random`: only `.random()` is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from envs.base import parse_action
from vlmq.config import parse_policy


def _choice(rng, seq: Sequence):
    return seq[min(int(rng.random() * len(seq)), len(seq) - 1)]


def malformed_output(
    legal_actions: Sequence[str], rng, format_action: Callable[[str], str] | None = None
) -> str:
    """An output that names no single legal action; checked with the parser, so it never scores.
    Given the env's `format_action`, half are its well-formed answer cut off at a random character:
    the commonest failure of a model that has learned the format (an early end of turn)."""
    a = _choice(rng, legal_actions)
    if format_action is not None and rng.random() < 0.5:
        answer = format_action(a)
        out = answer[: 1 + int(rng.random() * (len(answer) - 1))]
        return out if parse_action(out, legal_actions) is None else ""
    b = _choice(rng, [x for x in legal_actions if x != a] or [a])
    candidates = [
        f"I think the best move is {a}.",
        f'{{"move": "{a}"}}',
        f'{{"thoughts": "I should pick {a}.", "action": "{a} or {b}"}}',
        f'{{"action": "{_choice(rng, ["jump", "wait", "up", "none", "?"])}"}}',
        f'{{"thoughts": "The answer is {a}',
        f"Action: {a}",
        "",
    ]
    out = _choice(rng, candidates)
    return out if parse_action(out, legal_actions) is None else ""


@dataclass
class Policy:
    kind: str
    p: float = 0.0
    malformed: float = 0.0  # epsilon and habit: the share of malformed outputs
    share: float = 0.0  # habit: the share of states with a habit

    def act(
        self,
        legal_actions: Sequence[str],
        expert_action: str | None,
        rng,
        format_action: Callable[[str], str],
        state: str = "",
    ) -> str:
        if not legal_actions:
            raise ValueError("a policy needs at least one legal action")
        broken = self.p if self.kind == "malformed" else self.malformed
        if broken and rng.random() < broken:
            return malformed_output(legal_actions, rng, format_action)
        if self.kind == "habit":
            wrong = habit_move(legal_actions, expert_action, state, self.share)
            if wrong is not None and rng.random() < self.p:
                return format_action(wrong)
            return format_action(expert_action if expert_action is not None else _choice(rng, legal_actions))
        explore = self.kind in ("random", "malformed") or (self.kind == "epsilon" and rng.random() < self.p)
        if explore or expert_action is None:
            return format_action(_choice(rng, legal_actions))
        return format_action(expert_action)


def habit_move(
    legal_actions: Sequence[str], expert_action: str | None, state: str, share: float
) -> str | None:
    """The state's habit, a legal move other than the expert's, or None (no habit here): fixed by a hash
    of the state and the expert's move, so every episode that reaches the state makes the same error."""
    h = int.from_bytes(hashlib.blake2b(f"{state}\0{expert_action}".encode(), digest_size=8).digest(), "big")
    wrong = [a for a in legal_actions if a != expert_action]
    if not wrong or (h >> 32) / 2**32 >= share:
        return None
    return wrong[(h & 0xFFFFFFFF) % len(wrong)]


def make_policy(spec: str) -> Policy:
    """The spec is parsed by the config's rule, so a bad `data.policy` fails at load time."""
    kind, p, m, f = parse_policy(spec)
    return Policy(kind, p, m, f)
