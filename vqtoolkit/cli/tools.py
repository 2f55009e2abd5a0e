"""Tool commands: list what the plugins add."""

from __future__ import annotations

import json

import click


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_command(as_json: bool) -> None:
    """List loaded plugins, where they come from, their hooks and conditions."""
    from ..plugins import describe

    listing = describe()
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    rows = listing["plugins"]
    width = max([len(r["name"]) for r in rows] + [6])
    click.echo(f"{'PLUGIN':<{width}}  {'SOURCE':<18}  HOOKS / CONDITIONS")
    for r in rows:
        detail = f"error: {r['error']}" if r["error"] else ", ".join(r["hooks"])
        if r["conditions"] or r["data_sources"]:
            detail += "  [" + ", ".join(r["conditions"] + r["data_sources"]) + "]"
        click.echo(f"{r['name']:<{width}}  {r['source']:<18}  {detail}")
    if listing["conditions"]:
        click.echo("\nCONDITIONS")
        for name, r in listing["conditions"].items():
            click.echo(f"  {name:<{width}}  {r['kind']:<10}  {r['description']}")
    if listing["data_sources"]:
        click.echo("\nDATA SOURCES")
        for name, r in listing["data_sources"].items():
            click.echo(f"  {name:<{width}}  {r['description']}")
    if listing["error"]:
        click.echo(f"\nError: {listing['error']}", err=True)
