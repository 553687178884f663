"""The ``kronk`` command: ``kronk server|model|catalog|chat|config|key``."""

from __future__ import annotations

import copy
import sys

import click

from kronk import __version__
from kronk.cli.catalog import catalog
from kronk.cli.chat import chat
from kronk.cli.config import config
from kronk.cli.keys import key
from kronk.cli.models import model
from kronk.cli.server import server

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="kronk")
def cli() -> None:
    """kronk: a local LLM server (GGUF models through llama.cpp, served by Ray Serve).

    Every setting has one name as a flag (--models-dir), an environment variable
    (KRONK_MODELS_DIR) and a config file key (models_dir); flags beat the environment,
    which beats the config file ($KRONK_HOME/config.yaml or --config).

    \b
    Start here:
      kronk server start              serve the default model on http://127.0.0.1:8000
      kronk model pull NAME           download a model (see `kronk catalog list`)
      kronk chat smollm2:135m         chat with a served model (the default one)
      kronk config show               the effective settings and where they come from
      kronk key create                an API key (then every request needs one)
    """


cli.add_command(server)
cli.add_command(model)
cli.add_command(catalog)
cli.add_command(chat)
cli.add_command(config)
cli.add_command(key)

# Ollama-style shortcuts (hidden): `kronk pull X` is `kronk model pull X`, and so on.
for _name in ("pull", "list", "show", "rm", "ps"):
    _alias = copy.copy(model.commands[_name])
    _alias.hidden = True
    cli.add_command(_alias, name=_name)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Exit codes: 0 ok, 1 failure, 2 bad input, 130 interrupted."""
    try:
        cli.main(args=argv, prog_name="kronk", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
