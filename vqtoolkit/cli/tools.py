"""Tool commands: list plugins; import reference checkpoints."""

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


@click.command("convert")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output bundle (.safetensors).")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="The reference YAML config published with the checkpoint (read as plain data).")
@click.option("--condition", default=None, help="What a VQGAN condition stage encodes (e.g. depth).")
@click.option("--n-head", type=click.IntRange(min=1), default=None,
              help="Transformer attention heads, when no config says so.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def convert_command(checkpoint: str, out: str, config: str | None, condition: str | None, n_head: int | None,
                    force: bool) -> None:
    """Import a taming-transformers checkpoint (.ckpt) safely, without running code from it."""
    from ..convert import convert_checkpoint

    report = convert_checkpoint(checkpoint, out, config=config, force=force, condition=condition, n_head=n_head)
    click.echo(report.summary())
    click.echo(f"wrote {out}")
