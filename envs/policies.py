"""Data-collection policies: they write the full output text a model would, for any env.

`make_policy(spec)` with spec `random | expert | epsilon:<p>[:<m>] | malformed:<p>`:
- random: a uniformly random legal action.
- expert: the env's scripted expert (random where it has none).
- epsilon:<p>: random with probability p, else expert. epsilon:<p>:<m>: first, with probability m, a
  malformed output (as below), else the same: the noisy-expert data of envs where random play almost
  never succeeds.
- malformed:<p>: with probability p an output that fails the syntax check the way base models fail
  (half of them the well-formed answer cut off anywhere; else prose, wrong key, an action that is not
  legal, two actions, a cut-off answer, nothing); else random. The cut-offs teach a critic what an
  early end of turn costs at every position of the format, which a clean dataset never shows
  (docs/driver.md).
`rng` is a `numpy.random.Generator` or a `random.Random`: only `.random()` is used.
"""

from __future__ import annotations

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
    malformed: float = 0.0  # epsilon only: the share of malformed outputs

    def act(
        self,
        legal_actions: Sequence[str],
        expert_action: str | None,
        rng,
        format_action: Callable[[str], str],
    ) -> str:
        if not legal_actions:
            raise ValueError("a policy needs at least one legal action")
        broken = self.p if self.kind == "malformed" else self.malformed
        if broken and rng.random() < broken:
            return malformed_output(legal_actions, rng, format_action)
        explore = self.kind in ("random", "malformed") or (self.kind == "epsilon" and rng.random() < self.p)
        if explore or expert_action is None:
            return format_action(_choice(rng, legal_actions))
        return format_action(expert_action)


def make_policy(spec: str) -> Policy:
    """The spec is parsed by the config's rule, so a bad `data.policy` fails at load time."""
    return Policy(*parse_policy(spec))
