"""Incremental UTF-8 decoding and stop-string hold-back (pure Python)."""

import random

from kronk.engine.text import StopMatcher, Utf8Decoder


def test_utf8_decoder_never_splits_characters():
    text = "héllo 日本語 😀 ok ∑"
    data = text.encode()
    rng = random.Random(0)
    for _ in range(50):
        dec, out, i = Utf8Decoder(), [], 0
        while i < len(data):
            n = rng.randint(1, 3)
            piece = dec.feed(data[i:i + n])
            assert "\ufffd" not in piece
            out.append(piece)
            i += n
        out.append(dec.flush())
        assert "".join(out) == text


def test_utf8_decoder_replaces_truly_invalid_bytes():
    dec = Utf8Decoder()
    assert dec.feed(b"a\xff") in ("a\ufffd", "a")
    assert (dec.feed(b"b") + dec.flush()).endswith("b")


def _run(stops, pieces):
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        text, hit = m.feed(p)
        out.append(text)
        if hit:
            return "".join(out), True
    out.append(m.flush())
    return "".join(out), False


def test_stop_string_split_across_pieces_is_never_emitted():
    text = "Hello world. STOP here and more"
    for cut in range(1, len(text)):
        got, hit = _run(["STOP"], [text[:cut], text[cut:]])
        assert hit and got == "Hello world. "


def test_partial_stop_prefix_is_released_when_it_does_not_match():
    got, hit = _run(["</end>"], ["a </e", "xtra"])
    assert not hit and got == "a </extra"


def test_earliest_of_several_stops_wins():
    got, hit = _run(["world", "lo w"], ["Hello world"])
    assert hit and got == "Hel"
