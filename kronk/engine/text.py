"""Incremental detokenization and stop-string hold-back."""

from __future__ import annotations


class Utf8Decoder:
    """Turns token bytes into text without ever splitting a multi-byte UTF-8 character."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> str:
        buf = self._pending + data
        # Find the longest prefix that is complete UTF-8: at most 3 trailing bytes can be an
        # unfinished character.
        for cut in range(len(buf), max(len(buf) - 4, -1), -1):
            try:
                text = buf[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self._pending = buf[cut:]
            return text
        # Not valid UTF-8 even when cut (the model produced invalid bytes): replace them.
        self._pending = b""
        return buf.decode("utf-8", errors="replace")

    def flush(self) -> str:
        """What is left at the end (invalid bytes become U+FFFD)."""
        out, self._pending = self._pending.decode("utf-8", errors="replace"), b""
        return out


class StopMatcher:
    """Holds back text that could be the start of a stop string; stop strings are never emitted."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None  # the stop string that was hit (the first in the text), once hit

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was hit). After a hit, nothing more is emitted."""
        if not self.stops:
            return text, False
        buf = self._held + text
        first, matched = -1, None
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and (first == -1 or i < first):
                first, matched = i, s
        if first != -1:
            self._held, self.matched = "", matched
            return buf[:first], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out
