"""The repetition guard that ends grammar-constrained generations stuck in a loop."""

from __future__ import annotations

import random

import pytest

from kronk.engine.repetition import MAX_PERIOD, MAX_WHITESPACE_RUN, MIN_SPAN, SPAN_PERIODS, RepetitionGuard


def trip_index(tokens, guard=None, pieces=None):
    """1-based index of the token at which the guard trips (None: never); pieces: token -> bytes."""
    g = guard or RepetitionGuard()
    pieces = pieces or {}
    for i, t in enumerate(tokens, 1):
        if g.feed(t, pieces.get(t, b" word")):
            return i
    return None


def span(p):
    return max(MIN_SPAN, SPAN_PERIODS * p)


def test_defaults_are_the_documented_thresholds():
    assert (MAX_PERIOD, MIN_SPAN, SPAN_PERIODS, MAX_WHITESPACE_RUN) == (32, 64, 4, 32)


@pytest.mark.parametrize("p", [1, 2, 3, 5, 7, 16, 17, 25, 32])
def test_a_cycle_trips_exactly_when_it_covers_its_span(p):
    cycle = list(range(1000, 1000 + p))
    prefix = list(range(50))  # distinct tokens before the loop starts
    seq = prefix + cycle * (2 * span(p) // p + 2)
    assert trip_index(seq) == len(prefix) + span(p)


@pytest.mark.parametrize("p", [1, 4, 32])
def test_the_reason_names_the_period(p):
    g = RepetitionGuard()
    assert trip_index(list(range(1000, 1000 + p)) * 200, guard=g)
    assert g.tripped and g.reason.startswith(f"a cycle of {p} token(s)")
    assert g.feed(1)  # stays tripped


def test_a_cycle_longer_than_max_period_is_not_a_cycle():
    cycle = list(range(1000, 1000 + MAX_PERIOD + 1))
    assert trip_index(cycle * 20) is None
    assert trip_index(cycle * 20, guard=RepetitionGuard(max_period=MAX_PERIOD + 1)) == 4 * (MAX_PERIOD + 1)


def test_a_long_varied_sequence_never_trips():
    rng = random.Random(0)
    # a small alphabet makes chance repeats of short patterns frequent, yet never 64 periodic tokens
    seq = [rng.randrange(50) for _ in range(50_000)]
    assert trip_index(seq) is None


def test_text_like_sequence_with_repeated_phrases_never_trips():
    rng = random.Random(1)
    phrases = [[rng.randrange(5000) for _ in range(rng.randint(3, 12))] for _ in range(40)]
    seq, last = [], None
    for _ in range(5000):
        ph = rng.choice([p for p in phrases if p is not last])
        seq += ph * rng.randint(1, 3)  # said up to three times in a row, as text sometimes does
        last = ph
    assert trip_index(seq) is None


def test_a_phrase_repeated_over_less_than_its_span_does_not_trip():
    for p in (1, 5, 10, 16, 20, 32):
        reps = (span(p) - 1) // p  # whole copies that stay below the span
        tail = (span(p) - 1) % p  # and as much of one more as fits
        cycle = list(range(1000, 1000 + p))
        loop = cycle * reps + cycle[:tail]
        assert len(loop) == span(p) - 1
        seq = list(range(100)) + loop + [7] + list(range(200, 260)) + loop
        assert trip_index(seq) is None, p


def test_a_broken_cycle_starts_counting_again():
    cycle = [1, 2, 3, 4]
    seq = cycle * 15 + [9] + cycle * 15  # 60 tokens, a different one, 60 tokens
    assert trip_index(seq) is None
    assert trip_index(seq + cycle) == len(seq) + 4  # the second run reaches 64 of its own


def test_a_whitespace_run_trips_at_the_cap():
    blank = {i: b" " * (i + 1) if i % 3 else b"\n" * i + b"\t" for i in range(1, 10)}
    rng = random.Random(2)
    blanks = [rng.randrange(1, 10) for _ in range(200)]  # varied blank tokens: no cycle
    seq = [100, 101, 102, *blanks]
    g = RepetitionGuard()
    assert trip_index(seq, guard=g, pieces=blank) == 3 + MAX_WHITESPACE_RUN
    assert g.reason == f"{MAX_WHITESPACE_RUN} whitespace tokens in a row"


def test_short_whitespace_runs_and_empty_pieces_do_not_trip():
    pieces = {0: b" ", 1: b"\n  ", 2: b""}  # 2: a control token, no text
    seq = []
    for i in range(3000):  # indentation-like runs below the cap, between real tokens
        seq += [0, 1] * (i % (MAX_WHITESPACE_RUN // 2)) + [100 + i]
    assert trip_index(seq, pieces=pieces) is None
    rng = random.Random(3)
    assert trip_index([rng.choice([2, 200 + i]) for i in range(3000)], pieces=pieces) is None


# --- counting loops: the same words around a number that counts up --------------------
BAR, QUESTION, SPACE, MARK, OPEN, CLOSE, COMMA = 1, 2, 3, 4, 5, 6, 7
PIECES = {BAR: b"|", QUESTION: b" Question", SPACE: b" ", MARK: b"?", OPEN: b"[", CLOSE: b"]", COMMA: b","}
PIECES.update({10 + d: str(d).encode() for d in range(10)})


def digits(k):
    return [10 + int(c) for c in str(k)]  # one token per digit, as SmolLM2 and Gemma tokenize numbers


def test_a_counting_loop_trips():
    # "| Question 1?| Question 2?| ..." inside one JSON string: SmolLM2 wrote this until its context was full
    seq = [t for k in range(1, 1000) for t in (BAR, QUESTION, SPACE, *digits(k), MARK)]
    g = RepetitionGuard()
    i = trip_index(seq, guard=g, pieces=PIECES)
    assert i is not None and g.reason.startswith("a counting cycle of 6 tokens")
    # it trips once the cycle covers twice the exact span: within the first 24 two-digit numbers
    # (9 one-digit numbers take 5 tokens each)
    assert g.reason.endswith(f"over {2 * MIN_SPAN} tokens")
    assert 2 * MIN_SPAN <= i <= 9 * 5 + 24 * 6


def test_numbers_alone_never_trip_as_a_counting_loop():
    # a JSON list of numbers counting up has no word in its cycle: a list, not a loop
    seq = [OPEN] + [t for k in range(100, 999) for t in (*digits(k), COMMA, SPACE)]
    assert trip_index(seq, pieces=PIECES) is None


def test_records_whose_numbers_vary_never_trip():
    # [{"x": 3, "y": 7}, {"x": 1, "y": 4}, ...]: two numbers change from copy to copy
    pieces = {**PIECES, 40: b'{"', 41: b"x", 42: b'":', 43: b' "', 44: b"y", 45: b"}"}
    rng = random.Random(4)
    seq = [OPEN]
    for _ in range(2000):
        seq += [40, 41, 42, SPACE, 10 + rng.randrange(10), COMMA, 43, 44, 42, SPACE, 10 + rng.randrange(10),
                45, COMMA, SPACE]
    assert trip_index(seq, pieces=pieces) is None
    # while only one of them counting, the rest equal, is a counting loop
    seq = [OPEN] + [t for k in range(100, 999) for t in (40, 41, 42, SPACE, *digits(k), COMMA, 43, 44, 42,
                                                         SPACE, 10, 45, COMMA, SPACE)]
    assert trip_index(seq, pieces=pieces) is not None


def test_an_exact_cycle_of_digits_with_words_is_caught_as_an_exact_cycle():
    seq = [t for _ in range(100) for t in (QUESTION, SPACE, *digits(42), MARK)]
    g = RepetitionGuard()
    assert trip_index(seq, guard=g, pieces=PIECES) == MIN_SPAN
    assert g.reason.startswith("a cycle of 5 token(s)")


def test_thresholds_are_validated():
    with pytest.raises(ValueError):
        RepetitionGuard(max_period=0)
    with pytest.raises(ValueError):
        RepetitionGuard(max_whitespace_run=0)


def test_memory_stays_bounded():
    g = RepetitionGuard()
    for t in range(100_000):
        g.feed(t)
    assert len(g._exact.hist) < 2 * MAX_PERIOD and len(g._counting.hist) < 2 * MAX_PERIOD
    assert len(g._words) < 2 * MAX_PERIOD
    assert g.n_tokens == 100_000 and not g.tripped


# --- free text, tokenized by the real models: the guard is on for every plain-text answer --------------
TIMES_TABLE = "".join(f"{n} x {k} = {n * k}\n" for n in (7, 12) for k in range(1, 13))
NATURAL_TEXTS = {
    "prose": "The capital of France is Paris. Paris is known for the Eiffel Tower, the Louvre and its cafes. "
             "Many people visit Paris every year, and many of them say that Paris is the most beautiful city "
             "they have seen. The city lies on the Seine, which flows through the middle of Paris.",
    "times table": TIMES_TABLE,
    "numbered steps": "".join(f"{i}. Add the {w} and stir for {i + 1} minutes.\n" for i, w in enumerate(
        ["flour", "sugar", "eggs", "milk", "butter", "salt", "vanilla", "cocoa", "yeast", "water", "oil",
         "honey", "lemon", "nuts", "raisins", "cream", "cheese", "apples", "pears", "berries"], 1)),
    "markdown table": "| Day | Weather | High | Low |\n|-----|---------|------|-----|\n" + "".join(
        f"| {d} | {w} | {20 + i} | {10 + i % 3} |\n" for i, (d, w) in enumerate(zip(
            ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"] * 3,
            ["sunny", "rain", "cloudy", "windy", "sunny", "snow", "fog"] * 3, strict=True))),
    "code": "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n\n"
            "    def __add__(self, other):\n        return Point(self.x + other.x, self.y + other.y)\n\n"
            "    def __sub__(self, other):\n        return Point(self.x - other.x, self.y - other.y)\n\n"
            "    def __mul__(self, k):\n        return Point(self.x * k, self.y * k)\n\n"
            "    def __repr__(self):\n        return f\"Point({self.x}, {self.y})\"\n",
    "song with a refrain": ("Row, row, row your boat, gently down the stream.\n"
                            "Merrily, merrily, merrily, merrily, life is but a dream.\n") * 3
                           + "Now the river carries us, past the willow and the mill.\n",
    "weekdays list": "".join(f"- {d}: {t}\n" for d, t in zip(
        ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"] * 2,
        ["work", "gym", "work", "cinema", "work", "market", "rest", "work", "swim", "work", "choir", "work",
         "hike", "rest"], strict=True)),
}
LOOPS = {
    "a phrase": "la femme au roi, " * 40,
    "a sentence": "The capital of France is Paris. " * 30,
    "a counting question": "".join(f"Question {k}? " for k in range(1, 200)),
}


@pytest.fixture(scope="module", params=["smollm", "gemma"])
def vocab(request):
    from kronk.engine.model import LlamaModel
    from tests.models import gemma_path, smollm_path

    return LlamaModel(smollm_path() if request.param == "smollm" else gemma_path(), vocab_only=True)


def real_trip(vocab, text):
    toks = vocab.tokenize(text, add_special=False, parse_special=False)
    g = RepetitionGuard()
    for i, t in enumerate(toks, 1):
        if g.feed(t, vocab.piece(t)):
            return i, g.reason
    return None


@pytest.mark.parametrize("name", list(NATURAL_TEXTS))
def test_natural_text_never_trips(vocab, name):
    assert real_trip(vocab, NATURAL_TEXTS[name]) is None


def test_all_the_natural_texts_in_one_answer_never_trip(vocab):
    assert real_trip(vocab, "\n\n".join(NATURAL_TEXTS.values()) * 2) is None


@pytest.mark.parametrize("name", list(LOOPS))
def test_real_loops_trip_early(vocab, name):
    found = real_trip(vocab, LOOPS[name])
    assert found is not None and found[0] <= 4 * MIN_SPAN, found
