"""A bounded repetition guard: notice a generation that has degenerated into a loop.

A small model at its default sampling can degenerate into repeating a phrase, and a
grammar (JSON mode, a JSON schema, a forced tool call) keeps it from ending its answer
in many ways; with no token limit (OpenWebUI sends none) such an answer would run until
its context is full. For a guarded request (``GenerationRequest.guarded``: the API turns
it on for every answer unless the request says ``repetition_guard: false`` or asks for
``ignore_eos``) the engine feeds every sampled token to a :class:`RepetitionGuard`; when
it trips, the generation ends with finish_reason ``"length"``.

It trips on any of:

* **a cycle**: the most recent tokens repeat with a period ``p`` (``1 <= p <=
  max_period``) over a span of at least ``max(min_span, span_periods * p)`` tokens.
  With the defaults (32, 64, 4) that is 64 identical tokens, a 16-token phrase four
  times back to back, or a 32-token sentence four times (128 tokens). Natural text,
  and real JSON, almost never repeat an exact 64-token window: a phrase said two or
  three times, or a short list of equal items, stays well below it, while a model in
  a loop repeats itself forever, so the guard costs a looping answer only a few dozen
  tokens more than necessary;
* **a counting cycle**: the same with every all-digit token taken as equal to every
  other, over twice the span (``max(2 * min_span, 2 * span_periods * p)``: 128 tokens,
  8 copies), when the copies differ in one number only (the digits that change sit
  side by side in the cycle) and the cycle holds a word: ``Question 166? Question
  167? ...``, a loop seen from SmolLM2 in JSON mode that no exact cycle catches. A
  list of numbers (no word), or of records whose fields vary (``{"x": 3, "y": 7}``:
  two numbers change), is never cut this way;
* **a whitespace run**: ``max_whitespace_run`` (32) whitespace-only tokens in a row.
  Tokenizers merge runs of blanks into single tokens, and the JSON grammars allow at
  most a newline and 20 blanks between two tokens of the document, so a real answer
  has a handful of such tokens in a row at most; 32 of them are at least 32 (usually
  hundreds of) blank characters that are not periodic (a periodic run is a cycle).

The cost is O(max_period) memory and, per token, a C-level count over the last
``max_period`` tokens plus a little Python work for each period at which the token
repeats (none or a few in text, at most ``max_period`` in a loop): for each period
``p`` it keeps how many of the latest tokens equal the token ``p`` places before them,
so the history is never re-scanned.
"""

from __future__ import annotations

import re

MAX_PERIOD = 32
MIN_SPAN = 64
SPAN_PERIODS = 4
MAX_WHITESPACE_RUN = 32
COUNTING_SPAN_FACTOR = 2  # a counting cycle must cover this many times the span of an exact one

_DIGITS = -1  # the key of every all-digit token in the counting detector (token ids are >= 0)
_WORD = re.compile(rb"[A-Za-z\x80-\xff]")  # a letter (any non-ASCII byte counts: letters of other scripts)


class _Cycles:
    """Runs of ``key[i] == key[i - p]`` for every period ``p``, updated in O(repeats) per key."""

    __slots__ = ("end", "hist", "max_period", "n", "need", "runs")

    def __init__(self, max_period: int, min_span: int, span_periods: int):
        self.max_period = max_period
        self.n = 0
        self.hist: list[int] = []  # the latest keys (between max_period and 2 * max_period of them)
        # For each period p: runs[p] keys in a row, the last at position end[p], each equal the key p
        # places before it; while end[p] is the latest position, the last runs[p] + p keys have period
        # p (a run whose end is older was broken). A cycle is found when that covers the span for p.
        self.runs = [0] * (max_period + 1)
        self.end = [-2] * (max_period + 1)
        self.need = [0] + [max(min_span, span_periods * p) - p for p in range(1, max_period + 1)]

    def feed(self, key: int) -> list[int]:
        """Record one key; the periods (largest first) at which it equals the key p places before."""
        hist, runs, end, n = self.hist, self.runs, self.end, self.n
        matched = []
        window = hist[-self.max_period:]
        m = len(window)
        j = -1
        for _ in range(window.count(key)):  # only the periods at which this key repeats: few in text
            j = window.index(key, j + 1)
            p = m - j
            runs[p] = runs[p] + 1 if end[p] == n - 1 else 1
            end[p] = n
            matched.append(p)
        hist.append(key)
        if len(hist) >= 2 * self.max_period:
            del hist[: len(hist) - self.max_period]
        self.n = n + 1
        return matched

    def cycle(self, p: int) -> bool:
        """Whether the latest keys are a cycle of period p over its span."""
        return self.end[p] == self.n - 1 and self.runs[p] >= self.need[p]

    def span(self, p: int) -> int:
        return self.runs[p] + p


class RepetitionGuard:
    """Feed it each sampled token and its bytes; :meth:`feed` returns True once the output is a loop."""

    __slots__ = ("_counting", "_exact", "_phases", "_words", "_ws_run", "max_period", "max_whitespace_run",
                 "min_span", "n_tokens", "reason", "span_periods")

    def __init__(self, max_period: int = MAX_PERIOD, min_span: int = MIN_SPAN, span_periods: int = SPAN_PERIODS,
                 max_whitespace_run: int = MAX_WHITESPACE_RUN):
        if max_period < 1 or min_span < 2 or span_periods < 2 or max_whitespace_run < 1:
            raise ValueError("repetition guard thresholds must be positive (spans of at least two tokens)")
        self.max_period = max_period
        self.min_span = min_span
        self.span_periods = span_periods
        self.max_whitespace_run = max_whitespace_run
        self.n_tokens = 0
        self.reason: str | None = None  # why it tripped, for logs
        self._exact = _Cycles(max_period, min_span, span_periods)
        self._counting = _Cycles(max_period, COUNTING_SPAN_FACTOR * min_span, COUNTING_SPAN_FACTOR * span_periods)
        # for each period of a counting run: the places in the cycle (position mod p) where digits changed
        self._phases: list[set[int]] = [set() for _ in range(max_period + 1)]
        self._words: list[bool] = []  # whether each of the latest tokens holds a letter (as _counting.hist)
        self._ws_run = 0

    @property
    def tripped(self) -> bool:
        return self.reason is not None

    def feed(self, token: int, piece: bytes = b"") -> bool:
        """Record one generated token (``piece``: the bytes it stands for); True when it is a loop."""
        n = self.n_tokens
        stripped = piece.strip()
        digits = stripped.isdigit()
        exact, counting = self._exact, self._counting
        exact_matched = exact.feed(token)
        counting_matched = counting.feed(_DIGITS if digits else token)
        words = self._words
        words.append(not digits and _WORD.search(piece) is not None)
        if len(words) >= 2 * self.max_period:
            del words[: len(words) - self.max_period]
        self.n_tokens = n + 1
        self._ws_run = self._ws_run + 1 if piece and not stripped else 0
        if self.reason is not None:
            return True
        if exact_matched:
            period = min((p for p in exact_matched if exact.cycle(p)), default=0)
            if period:
                self.reason = f"a cycle of {period} token(s) repeated over {exact.span(period)} tokens"
                return True
        found = 0
        for p in counting_matched:
            phases = self._phases[p]
            if counting.runs[p] == 1:
                phases.clear()
            if exact.end[p] != n:  # equal only as digits: a number changed here
                phases.add(n % p)
            if counting.cycle(p) and phases and any(words[-p:]) and _side_by_side(phases, p):
                found = p if not found else min(found, p)
        if found:
            self.reason = f"a counting cycle of {found} tokens repeated over {counting.span(found)} tokens"
        elif self._ws_run >= self.max_whitespace_run:
            self.reason = f"{self._ws_run} whitespace tokens in a row"
        return self.reason is not None


def _side_by_side(phases: set[int], p: int) -> bool:
    """Whether the places (mod p) form one run of neighbours: the digits of a single number."""
    if len(phases) >= p:
        return False
    s = sorted(phases)
    gaps = sum(1 for a, b in zip(s, [*s[1:], s[0] + p], strict=True) if b - a != 1)
    return gaps <= 1
