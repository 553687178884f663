"""A loaded GGUF model: weights, vocabulary, tokenization and metadata (no context)."""

from __future__ import annotations

import ctypes
import os
import threading
from functools import lru_cache
from pathlib import Path

import llama_cpp

from kronk.errors import EngineError, InvalidRequest

_backend_lock = threading.Lock()
_backend_ready = False


def init_backend(llama_log: bool = False) -> None:
    """Start llama.cpp's backend (once per process). ``llama_log`` (the ``llama_log`` setting): show
    llama.cpp's own log; otherwise it goes nowhere. The latest call decides for the whole process."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True
        _set_logs(llama_log)


_log_cb = None
_logs_quiet = False


def _set_logs(llama_log: bool) -> None:
    """Send llama.cpp's chatter to nowhere unless ``llama_log``; turning it back on restores
    llama-cpp-python's own logger (stderr)."""
    global _log_cb, _logs_quiet
    if llama_log == (not _logs_quiet):
        return
    if llama_log:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        _logs_quiet = False
        return
    if _log_cb is None:
        @llama_cpp.llama_log_callback
        def _cb(level, text, user_data):  # pragma: no cover - C callback
            return None

        _log_cb = _cb
    llama_cpp.llama_log_set(_log_cb, ctypes.c_void_p(0))
    _logs_quiet = True


def physical_cores() -> int:
    """Physical cores available to this process (llama.cpp runs best with one thread per core)."""
    try:
        avail = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        avail = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
                cores.add((phys, core))
    except OSError:
        pass
    n = len(cores) or avail
    return max(1, min(n, avail))



# Control tokens the output parsers read (kronk/parsers: tool calls, reasoning, gpt-oss's channels) render as their
# text, as llama-server's "preserved tokens" do; every other control token (BOS, EOS, turn markers) renders as
# nothing. A vocabulary where a marker is ordinary text is not affected.
PRESERVED_MARKERS = (
    "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<|python_tag|>", "<|python_start|>", "<|python_end|>",
    "<tool_call>", "</tool_call>", "<think>", "</think>", "<|tool_call|>", "<TOOLCALL>", "</TOOLCALL>",
    "<|channel|>", "<|message|>", "<|constrain|>", "<|start|>", "<|end|>",
    "<\uff5ctool\u2581calls\u2581begin\uff5c>", "<\uff5ctool\u2581calls\u2581end\uff5c>",
    "<\uff5ctool\u2581call\u2581begin\uff5c>", "<\uff5ctool\u2581call\u2581end\uff5c>",
    "<\uff5ctool\u2581sep\uff5c>",
)


class LlamaModel:
    def __init__(self, path: str | Path, gpu_layers: int = 0, main_gpu: int = 0,
                 tensor_split: list[float] | None = None, vocab_only: bool = False,
                 repack: bool = False, llama_log: bool = False):
        init_backend(llama_log)
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"model file not found: {path}")
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = gpu_layers if gpu_layers >= 0 else 999
        params.main_gpu = main_gpu
        params.vocab_only = vocab_only
        # Repacked CPU weights compute a row differently in a block of 4 rows than alone, so
        # outputs would depend on how many sequences share a step; off unless asked for.
        params.use_extra_bufts = repack
        self._tensor_split = None
        if tensor_split:
            n = llama_cpp.llama_max_devices()
            if len(tensor_split) > n:
                raise InvalidRequest(f"tensor_split has {len(tensor_split)} entries; this build supports {n} devices",
                                     param="tensor_split")
            arr = (ctypes.c_float * n)(*(tensor_split + [0.0] * (n - len(tensor_split))))
            self._tensor_split = arr
            params.tensor_split = arr
        self.path = path
        self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise EngineError(f"llama.cpp could not load {path} (not a GGUF file, or an unsupported architecture)")
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.ptr)
        self.n_embd = llama_cpp.llama_model_n_embd(self.ptr)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self._piece = lru_cache(maxsize=65536)(self._piece_uncached)
        self.preserved = self._preserved_tokens()

    # -- metadata -----------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):  # long value (chat templates): ask again with room for it
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    @property
    def architecture(self) -> str:
        return self.meta("general.architecture") or "unknown"

    @property
    def chat_template(self) -> str | None:
        ptr = llama_cpp.llama_model_chat_template(self.ptr, None)
        return ptr.decode("utf-8", errors="replace") if ptr else None

    @property
    def is_embedding_model(self) -> bool:
        has_pooling = self.meta(f"{self.architecture}.pooling_type") is not None
        encoder_only = llama_cpp.llama_model_has_encoder(self.ptr) and not llama_cpp.llama_model_has_decoder(self.ptr)
        return has_pooling or bool(encoder_only)

    @property
    def size_bytes(self) -> int:
        return int(llama_cpp.llama_model_size(self.ptr))

    def token_text(self, token: int) -> str:
        t = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return t.decode("utf-8", errors="replace") if t else ""

    # -- tokens -------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            raise InvalidRequest("the prompt could not be tokenized")
        tokens = list(buf[:n])
        # Chat templates put BOS in the text themselves; never start with two.
        if add_special and len(tokens) >= 2 and self.add_bos and tokens[0] == tokens[1] == self.bos:
            tokens = tokens[1:]
        return tokens

    def _preserved_tokens(self) -> frozenset[int]:
        """The control tokens of :data:`PRESERVED_MARKERS` this vocabulary has (each marker one token)."""
        found = set()
        for marker in PRESERVED_MARKERS:
            toks = self.tokenize(marker, add_special=False, parse_special=True)
            if len(toks) == 1 and llama_cpp.llama_vocab_is_control(self.vocab, toks[0]):
                found.add(toks[0])
        return frozenset(found)

    def _piece_uncached(self, token: int) -> bytes:
        special = token in getattr(self, "preserved", ())
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing, except the markers a parser reads:
        :data:`PRESERVED_MARKERS`)."""
        return self._piece(token)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def eog_tokens(self) -> list[int]:
        found = {t for t in (self.eos, llama_cpp.llama_vocab_eot(self.vocab)) if t >= 0}
        # EOG tokens are few and live among the control tokens; scan the vocabulary once.
        for t in range(self.n_vocab):
            if llama_cpp.llama_vocab_is_eog(self.vocab, t):
                found.add(t)
        return sorted(found)

    def close(self) -> None:
        if getattr(self, "ptr", None):
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None
