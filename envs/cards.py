"""Gym Cards (RL4VLM): NumberLine, EZPoints, Points24, Blackjack, with the rules in docs/envs.md.

Images are 300x300 RGB drawn with PIL in DejaVuSans from matplotlib's package data, so rendering is
identical on every machine (no system fonts). All randomness comes from the env's seeded `np_random`.
"""

from __future__ import annotations

import importlib.util
import itertools
from fractions import Fraction
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from envs.base import VLMEnv

SIZE = 300
GREEN = (53, 101, 77)
SUITS = "\u2660\u2665\u2666\u2663"  # spades hearts diamonds clubs
RANKS = {1: "A", 11: "J", 12: "Q", 13: "K"}


@cache
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVuSans shipped inside matplotlib (found without importing matplotlib, which is slow)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("matplotlib is required for its DejaVuSans.ttf (pip install matplotlib)")
    path = Path(next(iter(spec.submodule_search_locations))) / "mpl-data/fonts/ttf/DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


@lru_cache(maxsize=512)
def card_image(rank: str | None, suit: int, w: int, h: int, background: tuple[int, int, int]) -> Image.Image:
    """A w x h playing card on `background`: rank in the corner, a big suit in the middle; rank None is
    face down. Cached: drawing rounded rectangles and glyphs dominates the cost of a frame."""
    img = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(img)
    box = (0, 0, w - 1, h - 1)
    if rank is None:
        draw.rounded_rectangle(box, radius=6, fill=(40, 60, 150), outline="white", width=3)
        return img
    draw.rounded_rectangle(box, radius=6, fill="white", outline="black", width=2)
    color = (200, 0, 0) if suit in (1, 2) else (0, 0, 0)
    draw.text((4, 2), rank, fill=color, font=font(max(12, w // 4)))
    draw.text((w / 2, h / 2 + 4), SUITS[suit], fill=color, font=font(max(12, w // 2)), anchor="mm")
    return img


@lru_cache(maxsize=512)
def card_array(rank: str | None, suit: int, w: int, h: int) -> np.ndarray:
    """Frames are composed in numpy: converting a whole PIL frame to an array costs more than drawing."""
    return np.asarray(card_image(rank, suit, w, h, GREEN))


STRIP_Y = 250  # the formula line of EZPoints / Points24


@lru_cache(maxsize=4096)
def text_strip(text: str) -> np.ndarray:
    img = Image.new("RGB", (SIZE, SIZE - STRIP_Y), GREEN)
    ImageDraw.Draw(img).text((10, SIZE * 0.86 - STRIP_Y), text, fill="white", font=font(20))
    return np.asarray(img)


@lru_cache(maxsize=1)
def _blackjack_table() -> np.ndarray:
    img = Image.new("RGB", (SIZE, SIZE), GREEN)
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), "Dealer", fill="white", font=font(16))
    draw.text((10, 150), "Player", fill="white", font=font(16))
    return np.asarray(img)


def card_rank(value: int, rng: np.random.Generator) -> str:
    """A face for a card value: 10 shows as one of 10, J, Q, K."""
    if value == 10:
        return ["10", "J", "Q", "K"][int(rng.integers(4))]
    return RANKS.get(value, str(value))


class NumberLine(VLMEnv):
    env_id = "numberline"
    description = "NumberLine: move Current to Target on the line 0 to 5."
    action_doc = '"-" (Current - 1) or "+" (Current + 1).'
    example_action = "+"
    time_limit = 10
    frame_shape = (SIZE, SIZE, 3)
    max_obs_chars = 64
    MAX = 5

    def _reset(self, options):
        self.pos = int(self.np_random.integers(self.MAX + 1))
        self.goal = int(self.np_random.integers(self.MAX + 1))
        if self.goal == self.pos:
            self.goal = (self.goal + 1) % self.MAX

    def legal_actions(self):
        return ["-", "+"]

    def _apply(self, action):
        before = abs(self.pos - self.goal)
        self.pos = max(0, self.pos - 1) if action == "-" else min(self.MAX, self.pos + 1)
        after = abs(self.pos - self.goal)
        if after == 0:
            return 1.0, True, False
        return (-1.0 if after >= before else 0.0), False, False

    def _obs_text(self, words):
        return f"Target: {self.goal}. Current: {self.pos}." if words else ""

    def render_image(self):
        return _numberline_image(self.goal, self.pos)

    def expert_action(self):
        return "+" if self.goal > self.pos else "-"

    def goal_reached(self):
        return self.pos == self.goal


@lru_cache(maxsize=64)
def _numberline_image(goal: int, pos: int) -> np.ndarray:
    """36 possible images: drawn once each (read-only arrays, like every rendered frame here)."""
    img = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(img)
    draw.text((30, 60), f"Target: {goal}", fill="black", font=font(36))
    draw.text((30, 180), f"Current: {pos}", fill="black", font=font(36))
    arr = np.asarray(img)
    arr.flags.writeable = False
    return arr


# ---- formulas (EZPoints, Points24) -------------------------------------------------------------


def evaluate(tokens: list[str]) -> Fraction | None:
    """Exact value of a formula over number and operator tokens, None if malformed or dividing by 0.

    Numbers are separate tokens and never concatenate ("1" then "2" is not 12), and division is exact,
    so 8 / (3 - 8 / 3) is 24 (floating point gives 23.999...).
    """
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def expr():
        nonlocal pos
        v = term()
        while peek() in ("+", "-"):
            op = tokens[pos]
            pos += 1
            w = term()
            v = v + w if op == "+" else v - w
        return v

    def term():
        nonlocal pos
        v = factor()
        while peek() in ("*", "/"):
            op = tokens[pos]
            pos += 1
            w = factor()
            v = v * w if op == "*" else v / w
        return v

    def factor():
        nonlocal pos
        tok = peek()
        pos += 1
        if tok == "(":
            v = expr()
            if peek() != ")":
                raise ValueError("unbalanced")
            pos += 1
            return v
        if tok is not None and tok.isdigit():
            return Fraction(int(tok))
        raise ValueError(f"unexpected {tok!r}")

    try:
        v = expr()
    except (ValueError, ZeroDivisionError):
        return None
    return v if pos == len(tokens) else None


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _value(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    if op == "/":
        return a / b if b else None
    return a + b if op == "+" else a - b if op == "-" else a * b


@cache
def _solvable(values: tuple[Fraction, ...], target: int, ops: str) -> bool:
    """Can these values (sorted) make `target`? Memoized on the multiset, so a full search is cheap."""
    if len(values) == 1:
        return values[0] == target
    for i, j in itertools.permutations(range(len(values)), 2):
        rest = [values[k] for k in range(len(values)) if k not in (i, j)]
        for op in ops:
            v = _value(op, values[i], values[j])
            if v is not None and _solvable(tuple(sorted([*rest, v])), target, ops):
                return True
    return False


def solutions(numbers: list[int], target: int, ops: str, parens: bool):
    """Yield formulas (token lists) that use each number once and equal `target`.

    Expressions are built bottom-up over all ordered pairings (both orders, so the expert finds a
    solution that continues most partial formulas), descending only where the rest stays solvable;
    parentheses appear only where precedence needs them. With `parens=False` formulas that need
    brackets are skipped (EZPoints has none).
    """

    # an item: (value, tokens, precedence of its top operator; 3 for a bare number)
    def combine(items):
        if len(items) == 1:
            yield items[0][1]
            return
        for i, j in itertools.permutations(range(len(items)), 2):
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            (va, ta, pa), (vb, tb, pb) = items[i], items[j]
            for op in ops:
                v = _value(op, va, vb)
                if v is None or not _solvable(tuple(sorted([*(x[0] for x in rest), v])), target, ops):
                    continue
                p = _PREC[op]
                left = ta if pa >= p else ["(", *ta, ")"]
                right = tb if pb > p or (pb == p and op in "+*") else ["(", *tb, ")"]
                if parens or (left is ta and right is tb):
                    yield from combine([*rest, (v, [*left, op, *right], p)])

    yield from combine([(Fraction(n), [str(n)], 3) for n in numbers])


@lru_cache(maxsize=4096)
def _all_solutions(numbers: tuple[int, ...], target: int, ops: str, parens: bool) -> list[list[str]]:
    return list(solutions(list(numbers), target, ops, parens))


class _Points(VLMEnv):
    """Build a formula from the cards that equals the target (EZPoints, Points24)."""

    target = 12
    num_cards = 2
    operators = ("+", "*", "=")
    formula_cap = 5
    time_limit = 10
    parens = False
    frame_shape = (SIZE, SIZE, 3)
    max_obs_chars = 256  # 4 cards and a formula of at most 21 tokens

    def __init__(self, face_cards_as_10: bool = True, **kw):
        super().__init__(**kw)
        self.numbers = [str(n) for n in range(1, 11 if face_cards_as_10 else 14)]
        self.face_cards_as_10 = face_cards_as_10

    def _deal(self) -> list[int]:
        raise NotImplementedError

    def _reset(self, options):
        ranks = self._deal()
        self.cards = [min(r, 10) if self.face_cards_as_10 else r for r in ranks]
        self.faces = [RANKS.get(r, str(r)) for r in ranks]
        self.suits = [int(self.np_random.integers(4)) for _ in ranks]
        self.formula: list[str] = []
        self._table = None  # the drawn cards, made on the first render
        # rejected numbers: not shown, but they count toward the formula cap (as in gym-cards)
        self.wasted = 0
        self._solved = False

    def legal_actions(self):
        return [*self.numbers, *self.operators]

    def _apply(self, action):
        if len(self.formula) + self.wasted > self.formula_cap:
            return -1.0, False, True
        if action == "=":
            used = sum(t.isdigit() for t in self.formula)
            self._solved = used == self.num_cards and evaluate(self.formula) == self.target
            return (10.0 if self._solved else -1.0), True, False
        if action.isdigit():
            n = int(action)
            if sum(t == action for t in self.formula) >= self.cards.count(n):
                self.wasted += 1
                return -1.0, False, False
        self.formula.append(action)
        return 0.0, False, False

    def _obs_text(self, words):
        if not words:
            return ""
        return f"Cards: {', '.join(map(str, self.cards))}. Formula: {' '.join(self.formula) or '(empty)'}."

    def render_image(self):
        if self._table is None:  # the cards do not change within an episode: draw them once
            self._table = np.full((SIZE, SIZE, 3), GREEN, dtype=np.uint8)
            w = int(SIZE / self.num_cards * 0.9)
            h = int(w * 7 / 5)
            y = (SIZE - h) // 2 - (10 if self.num_cards == 2 else 30)
            for i, (face, suit) in enumerate(zip(self.faces, self.suits)):
                x = 5 + int(i * w * 1.1)
                self._table[y : y + h, x : x + w] = card_array(face, suit, w, h)
        frame = self._table.copy()
        frame[STRIP_Y:] = text_strip("Formula: " + " ".join(self.formula))
        return frame

    def expert_action(self):
        ops = "".join(o for o in self.operators if o in _PREC)
        n = len(self.formula)
        for sol in _all_solutions(tuple(sorted(self.cards)), self.target, ops, self.parens):
            if sol[:n] == self.formula:
                return sol[n] if n < len(sol) else "="
        return "="  # unsolvable, or the formula went wrong: end the episode now (least loss)

    def goal_reached(self):
        return self._solved


class EZPoints(_Points):
    env_id = "ezpoints"
    description = "EZPoints: build a formula equal to 12 using both cards once. J, Q, K count 10."
    action_doc = 'a number 1-10, "+", "*", or "=" to finish.'
    example_action = "2"

    def __init__(self, **kw):
        super().__init__(face_cards_as_10=True, **kw)

    def _deal(self):
        """Card 1 in 2..13 (value min(c, 10)); card 2 makes 12 with it by * (half the time, when possible)
        or by +; the order is shuffled. Card 2's rank is its value."""
        r1 = int(self.np_random.integers(2, 14))
        v1 = min(r1, 10)
        v2 = 12 // v1 if 12 % v1 == 0 and self.np_random.random() < 0.5 else 12 - v1
        cards = [r1, v2]
        return cards[::-1] if self.np_random.random() < 0.5 else cards


class Points24(_Points):
    env_id = "points24"
    description = "Points24: build a formula equal to 24 using all four cards once each. J, Q, K count 10."
    action_doc = 'a number 1-10, "+", "-", "*", "/", "(", ")", or "=" to finish.'
    example_action = "("
    target = 24
    num_cards = 4
    operators = ("+", "-", "*", "/", "(", ")", "=")
    formula_cap = 20
    time_limit = 30
    parens = True

    def __init__(self, face_cards_as_10: bool = True, **kw):
        super().__init__(face_cards_as_10=face_cards_as_10, **kw)
        if not face_cards_as_10:
            self.description = (
                "Points24: build a formula equal to 24 using all four cards once each. J=11, Q=12, K=13."
            )
            self.action_doc = 'a number 1-13, "+", "-", "*", "/", "(", ")", or "=" to finish.'

    def _deal(self):
        return [int(self.np_random.integers(1, 14)) for _ in range(4)]


class Blackjack(VLMEnv):
    """gymnasium's Blackjack-v1 rules (infinite deck, no naturals bonus, dealer hits below 17)."""

    env_id = "blackjack"
    description = "Blackjack: beat the dealer's total without going over 21. Aces count 1 or 11."
    action_doc = '"stand" (stop) or "hit" (take a card).'
    example_action = "hit"
    time_limit = 15
    frame_shape = (SIZE, SIZE, 3)
    max_obs_chars = 256  # 15 turns: at most 17 cards a hand
    DECK = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10)

    def _draw(self) -> tuple[int, str, int]:
        v = self.DECK[int(self.np_random.integers(len(self.DECK)))]
        return v, card_rank(v, self.np_random), int(self.np_random.integers(4))

    def _reset(self, options):
        self.player = [self._draw(), self._draw()]
        self.dealer = [self._draw(), self._draw()]
        self.outcome = 0.0
        self.over = False

    @staticmethod
    def total(hand) -> tuple[int, bool]:
        """(best total, usable ace)."""
        s = sum(v for v, _, _ in hand)
        soft = any(v == 1 for v, _, _ in hand) and s + 10 <= 21
        return s + 10 * soft, soft

    def legal_actions(self):
        return ["stand", "hit"]

    def _apply(self, action):
        if action == "hit":
            self.player.append(self._draw())
            if self.total(self.player)[0] > 21:
                self.outcome, self.over = -1.0, True
                return -1.0, True, False
            return 0.0, False, False
        while self.total(self.dealer)[0] < 17:
            self.dealer.append(self._draw())
        p, d = self.total(self.player)[0], self.total(self.dealer)[0]
        self.outcome = 1.0 if d > 21 or p > d else -1.0 if p < d else 0.0
        self.over = True
        return self.outcome, True, False

    def _obs_text(self, words):
        if not words:
            return ""
        p, soft = self.total(self.player)
        up = self.dealer[0][1]
        if self.over:
            return (
                f"Dealer: {', '.join(r for _, r, _ in self.dealer)} (total {self.total(self.dealer)[0]}). "
                f"Your cards: {', '.join(r for _, r, _ in self.player)} (total {p})."
            )
        return f"Dealer shows: {up}. Your cards: {', '.join(r for _, r, _ in self.player)} (total {p}{', soft' if soft else ''})."

    def render_image(self):
        frame = _blackjack_table().copy()
        dealer = self.dealer if self.over else self.dealer[:1] + [(0, None, 0)]
        for row, hand in ((30, dealer), (172, self.player)):
            step = min(60, (SIZE - 70) // max(1, len(hand) - 1)) if len(hand) > 1 else 60
            for i, (_, rank, suit) in enumerate(hand):
                x = 10 + i * step
                frame[row : row + 111, x : x + 56] = card_array(rank, suit, 56, 111)
        return frame

    def expert_action(self):
        """Basic strategy for hit/stand only (no doubling or splitting), by the dealer's up-card."""
        p, soft = self.total(self.player)
        d = self.dealer[0][0]
        d = 11 if d == 1 else d
        if soft:
            stand = p >= 19 or (p == 18 and d <= 8)
        else:
            stand = p >= 17 or (13 <= p <= 16 and d <= 6) or (p == 12 and 4 <= d <= 6)
        return "stand" if stand else "hit"

    def goal_reached(self):
        return self.outcome > 0
