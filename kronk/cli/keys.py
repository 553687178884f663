"""``kronk key create|list|revoke``: API keys in the home's keys file (a running server picks changes up in a
second, no restart; see docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import click

from kronk.cli.common import build_settings, config_option, ensure_dir, fail, overrides_of, print_json
from kronk.security.keys import KeyFileError, KeyStore
from kronk.settings import Settings

home_option = click.option("--home", type=click.Path(path_type=Path, file_okay=False), default=None,
                           help="kronk's home folder, where keys.json is [env KRONK_HOME; default: ~/.kronk].")


def _store(home: Path | None, config: Path | None) -> KeyStore:
    settings: Settings = build_settings(overrides_of({"home": home}, ("home",)), config)
    return KeyStore(settings.home)


@click.group("key")
def key() -> None:
    """Create, list and revoke API keys.

    \b
    With any key (or the api_keys setting) configured, every request needs one:
    'Authorization: Bearer <key>' (the OpenAI SDK's api_key) or 'x-api-key: <key>'.
    """


@key.command("create")
@click.option("--admin", is_flag=True, help="Allow pulling and deleting models (the admin scope).")
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="At most this many requests per minute.")
@click.option("--name", default=None, help="A name to list and revoke it by [default: key-<fingerprint>].")
@home_option
@config_option
def create(admin: bool, rpm: int | None, name: str | None, home: Path | None, config: Path | None) -> None:
    """Make a key and print it once (only a salted hash of it is stored)."""
    store = _store(home, config)
    ensure_dir(store.home, "home folder", "--home")
    try:
        secret, rec = store.create(name=name, admin=admin, rpm=rpm)
        store.ensure_local_admin_key()  # keys are on now: `kronk` commands from this home keep working
    except KeyFileError as e:
        fail(str(e))
    click.echo(secret)
    scopes = "admin" if rec.admin else "no admin scope"
    limit = f", {rec.rpm} requests per minute" if rec.rpm else ""
    click.echo(f"kronk: created key {rec.name!r} (fingerprint {rec.fingerprint}, {scopes}{limit}); it is shown only "
               f"this once. A running server uses it within a second.", err=True)


@key.command("list")
@home_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_keys(home: Path | None, config: Path | None, as_json: bool) -> None:
    """The keys: name, fingerprint, scopes, rpm and when made (never the key or its hash)."""
    store = _store(home, config)
    try:
        records = store.list()
    except KeyFileError as e:
        fail(str(e), 1)
    rows = [r.public() for r in records]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo(f"no API keys in {store.path}; the server is open to loopback clients only "
                   "(make one with `kronk key create`)")
        return
    for r in rows:
        r["shown"] = r["name"] + (" (local)" if r["local"] else "")
    widths = (max(4, *(len(r["shown"]) for r in rows)), 11, 6, 6)
    click.echo(f"{'NAME':<{widths[0]}}  {'FINGERPRINT':<{widths[1]}}  {'SCOPES':<{widths[2]}}  "
               f"{'RPM':<{widths[3]}}  CREATED")
    for r in rows:
        scopes = ",".join(r["scopes"]) or "-"
        click.echo(f"{r['shown']:<{widths[0]}}  {r['fingerprint']:<{widths[1]}}  {scopes:<{widths[2]}}  "
                   f"{r['rpm'] or '-'!s:<{widths[3]}}  {r['created']}")


@key.command("revoke")
@click.argument("name_or_fingerprint")
@home_option
@config_option
def revoke(name_or_fingerprint: str, home: Path | None, config: Path | None) -> None:
    """Remove a key by its name or fingerprint (a running server refuses it within a second)."""
    store = _store(home, config)
    try:
        rec = store.revoke(name_or_fingerprint)
    except KeyFileError as e:
        fail(str(e))
    click.echo(f"revoked {rec.name} ({rec.fingerprint})")
