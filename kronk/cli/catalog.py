"""``kronk catalog list|show``."""

from __future__ import annotations

from typing import Any

import click

from kronk.catalog import CAPABILITIES
from kronk.cli.client import ServerError
from kronk.cli.common import fail, human_bytes, print_json
from kronk.cli.models import _ops, store_options, table


@click.group()
def catalog() -> None:
    """Models kronk knows by short name."""


@catalog.command("list")
@click.option("--family", default=None, help="Only this family (e.g. gemma3, llama3.2, qwen3).")
@click.option("--capability", type=click.Choice(CAPABILITIES), default=None, help="Only models with this capability.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@store_options
def list_cmd(family: str | None, capability: str | None, as_json: bool, **params: Any) -> None:
    """The catalog (PRESENT: already in the models dir)."""
    ops = _ops(params)
    families = ops.families()
    if family is not None and family not in families:
        fail(f"unknown family {family!r}; known families: {', '.join(families)}")
    try:
        entries = ops.catalog(family, capability)
    except ServerError as e:
        fail(e.message, 2 if e.status in (400, 404, 422) else 1)
    if as_json:
        print_json(entries)
        return
    table(["NAME", "FAMILY", "QUANT", "SIZE", "CONTEXT", "CAPABILITIES", "PRESENT"],
          [[e["name"], e["family"], e["quant"], human_bytes(e["size_bytes"]), e["context_length"],
            ",".join(e["capabilities"]), "yes" if e.get("present") else ""] for e in entries])


@catalog.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@store_options
def show_cmd(name: str, as_json: bool, **params: Any) -> None:
    """One catalog entry."""
    ops = _ops(params, local=True)
    assert not ops.remote
    try:
        entry = ops.manager.catalog_.get(name)  # type: ignore[union-attr]
    except KeyError as e:
        fail(f"{getattr(e, 'message', None) or e}; see `kronk catalog list`")
    data = {**entry.to_dict(), "present": ops.get_model(entry.name) is not None}
    if as_json:
        print_json(data)
        return
    for k, v in data.items():
        if v in (None, [], ""):
            continue
        if k == "size_bytes":
            v = human_bytes(v)
        elif isinstance(v, list):
            v = ", ".join(map(str, v))
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        click.echo(f"{k:16} {v}")
    if not data["present"]:
        click.echo(f"\npull it with: kronk model pull {entry.name}")
