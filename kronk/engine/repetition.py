"""A bounded repetition guard: notice a generation that has degenerated into a loop.

A grammar (JSON mode, a JSON schema, a forced tool call) keeps a small model from
ending its answer in many ways, and with no token limit (OpenWebUI sends none) a
model stuck in a loop inside a JSON string would write until its context is full.
The engine feeds every sampled token to a :class:`RepetitionGuard`; when it trips, the
generation ends with finish_reason ``"length"``.

It trips on either of:

* **a cycle**: the most recent tokens repeat with a period ``p`` (``1 <= p <=
  max_period``) over a span of at least ``max(min_span, span_periods * p)`` tokens.
  With the defaults (32, 64, 4) that is 64 identical tokens, a 16-token phrase four
  times back to back, or a 32-token sentence four times (128 tokens). Natural text,
  and real JSON, almost never repeat an exact 64-token window: a phrase said two or
  three times, or a short list of equal items, stays well below it, while a model in
  a loop repeats itself forever, so the guard costs a looping answer only a few dozen
  tokens more than necessary;
* **a whitespace run**: ``max_whitespace_run`` (32) whitespace-only tokens in a row.
  Tokenizers merge runs of blanks into single tokens, and the JSON grammars allow at
  most a newline and 20 blanks between two tokens of the document, so a real answer
  has a handful of such tokens in a row at most; 32 is hundreds of blank characters
  that are not periodic (a periodic run is a cycle anyway).

The cost is O(max_period) memory and, per token, one C-level count over the last
``max_period`` tokens plus a little Python work for each period at which the token
repeats (none or a few in text, at most ``max_period`` in a loop): for each period
``p`` it keeps how many of the latest tokens equal the token ``p`` places before them,
so the history is never re-scanned.
"""

from __future__ import annotations

MAX_PERIOD = 32
MIN_SPAN = 64
SPAN_PERIODS = 4
MAX_WHITESPACE_RUN = 32


class RepetitionGuard:
    """Feed it each sampled token; :meth:`feed` returns True once the output is a loop."""

    __slots__ = ("_end", "_hist", "_need", "_runs", "_ws_run", "max_period", "max_whitespace_run", "min_span",
                 "n_tokens", "reason", "span_periods")

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
        self._hist: list[int] = []  # the latest tokens (between max_period and 2 * max_period of them)
        # For each period p: _runs[p] tokens in a row, the last at position _end[p], each equal the token
        # p places before it; while _end[p] is the latest position, the last _runs[p] + p tokens have
        # period p (a run whose _end is older was broken). It trips when that covers the span for p.
        self._runs = [0] * (max_period + 1)
        self._end = [-2] * (max_period + 1)
        self._need = [0] + [max(min_span, span_periods * p) - p for p in range(1, max_period + 1)]
        self._ws_run = 0

    @property
    def tripped(self) -> bool:
        return self.reason is not None

    def feed(self, token: int, whitespace: bool = False) -> bool:
        """Record one generated token (``whitespace``: its text is blanks only); True when it is a loop."""
        hist, runs, end, need, n = self._hist, self._runs, self._end, self._need, self.n_tokens
        period = 0
        window = hist[-self.max_period:]
        m = len(window)
        j = -1
        for _ in range(window.count(token)):  # only the periods at which this token repeats: few in text
            j = window.index(token, j + 1)
            p = m - j
            r = runs[p] + 1 if end[p] == n - 1 else 1
            runs[p], end[p] = r, n
            if r >= need[p] and (not period or p < period):
                period = p
        hist.append(token)
        if len(hist) >= 2 * self.max_period:
            del hist[: len(hist) - self.max_period]
        self.n_tokens = n + 1
        self._ws_run = self._ws_run + 1 if whitespace else 0
        if self.reason is None:
            if period:
                self.reason = f"a cycle of {period} token(s) repeated over {runs[period] + period} tokens"
            elif self._ws_run >= self.max_whitespace_run:
                self.reason = f"{self._ws_run} whitespace tokens in a row"
        return self.reason is not None
