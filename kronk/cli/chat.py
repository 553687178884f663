"""``kronk chat MODEL``: an interactive, streamed chat against the server, history kept."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from kronk.cli.client import Client, ServerError
from kronk.cli.common import build_settings, config_option, err, fail, overrides_of, url_option
from kronk.settings import Settings

HELP = "commands: /clear (forget the history), /bye or Ctrl-D (quit), /help"


def _ask(prompt: str, interactive: bool) -> str | None:
    try:
        if interactive:
            return input(prompt)
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    except (EOFError, KeyboardInterrupt):
        return None


def _answer(client: Client, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Stream one answer to stdout; (its text, usage)."""
    text: list[str] = []
    usage: dict[str, Any] = {}
    for event in client.stream("/v1/chat/completions", body):
        if "error" in event:
            raise ServerError(str(event["error"].get("message") or event["error"]))
        if event.get("usage"):
            usage = event["usage"]
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                text.append(piece)
                click.echo(piece, nl=False)
                sys.stdout.flush()
    click.echo()
    return "".join(text), usage


def _known(settings: Settings, model: str) -> bool:
    """The name could be served: in the catalog, in the store, an hf.co reference or a .gguf path."""
    from kronk.catalog import Catalog
    from kronk.store import InvalidRef, ModelStore, parse_ref

    try:
        ref = parse_ref(model)
    except InvalidRef:
        return False
    catalog = Catalog.load(settings)
    return ref.kind != "catalog" or model in catalog or ModelStore(settings, catalog=catalog).get(model) is not None


@click.command("chat", short_help="Chat with a served model, answers streamed.")
@click.argument("model")
@click.option("--system", "system", default=None, help="A system message to start the chat with.")
@click.option("--temperature", type=click.FloatRange(min=0, max=2), default=None, help="Sampling temperature.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Token limit per answer.")
@click.option("--stats/--no-stats", default=True, help="Show token counts and speed after each answer (stderr).")
@url_option
@config_option
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="kronk's home folder (finds the server it started) [env KRONK_HOME].")
def chat(model: str, system: str | None, temperature: float | None, max_tokens: int | None, stats: bool,
         url: str | None, config: Path | None, home: Path | None) -> None:
    """Chat with a served model in the terminal, answers streamed.

    Each turn resends the whole history, so the server reuses the cached prefix (the token
    counts after each answer show it). Reads lines from the terminal or stdin; /clear
    forgets the history, /bye or Ctrl-D quits.
    """
    settings = build_settings(overrides_of({"home": home}, ("home",)), config)
    client = Client.for_settings(url, settings, timeout=600)
    if client.health() is None and not _known(settings, model):
        fail(f"unknown model {model!r}; see `kronk catalog list` and `kronk model list` for names")
    health = client.require()
    served = list(health.get("models") or [])
    if model not in served:
        fail(f"model {model!r} is not served by {client.url} (served: {', '.join(served) or 'none'}); "
             f"pick one of those, or restart the server with `kronk server start --model {model}`")
    interactive = sys.stdin.isatty()
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    if interactive:
        err(f"chatting with {model} at {client.url}; {HELP}")
    while True:
        line = _ask(">>> ", interactive)
        if line is None:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/bye", "/exit", "/quit"):
            break
        if line == "/clear":
            history = history[:1] if system else []
            err("(history cleared)")
            continue
        if line in ("/help", "/?"):
            err(HELP)
            continue
        history.append({"role": "user", "content": line})
        body: dict[str, Any] = {"model": model, "messages": history, "stream": True,
                                "stream_options": {"include_usage": True}}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        t0 = time.monotonic()
        try:
            text, usage = _answer(client, body)
        except KeyboardInterrupt:
            click.echo()
            err("(answer interrupted)")
            history.pop()
            continue
        except ServerError as e:
            click.echo()
            history.pop()
            if not interactive:
                fail(e.message, 1)
            err(f"error: {e.message}")
            continue
        history.append({"role": "assistant", "content": text})
        if stats and usage:
            dt = time.monotonic() - t0
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            out = usage.get("completion_tokens") or 0
            err(f"({usage.get('prompt_tokens', 0)} prompt tokens, {cached} reused from cache; "
                f"{out} generated, {out / dt if dt > 0 else 0:.1f} tok/s)")
