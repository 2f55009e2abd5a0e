"""Tool commands: list what the plugins add."""

from __future__ import annotations

import json
from typing import Any

import click


def _table(rows: list[list[str]], indent: str = "") -> list[str]:
    """Rows as columns as wide as their longest cell (the last column is left ragged)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [indent + "  ".join([cell.ljust(w) for cell, w in zip(row, widths)] + [row[-1]]).rstrip()
            for row in rows]


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List loaded plugins, where they come from, their hooks and what each registered.

    Exits with status 1 when a plugin failed to load or one of its hooks was skipped."""
    from ..plugins import KINDS, describe

    listing = describe()
    _add_commands(listing, ctx)
    if as_json:
        click.echo(json.dumps(listing, indent=2))
    else:
        kinds = [*KINDS, "loggers", "commands"]
        rows = [["PLUGIN", "SOURCE", "HOOKS [WHAT IT REGISTERED]"]]
        for r in listing["plugins"]:
            detail = f"error: {r['error']}" if r["error"] else ", ".join(r["hooks"])
            names = [name for kind in kinds for name in r[kind]]
            if names:
                detail += "  [" + ", ".join(names) + "]"
            rows.append([r["name"], r["source"], detail])
        click.echo("\n".join(_table(rows)))
        for kind in kinds:
            if listing[kind]:
                click.echo(f"\n{kind.replace('_', ' ').upper()}")
                click.echo("\n".join(_table([[name, r["plugin"], *([r["kind"]] if "kind" in r else []),
                                              r["description"]] for name, r in listing[kind].items()], "  ")))
    if listing["failed"]:
        failed = listing["failed"]
        click.echo(f"Error: {len(failed)} plugin(s) failed and were skipped: {', '.join(failed)} "
                   "(the error of each is listed above); fix or uninstall them", err=True)
        ctx.exit(1)


def _add_commands(listing: dict[str, Any], ctx: click.Context) -> None:
    """The commands plugins added, in each plugin's row and by name (the plugin manager knows
    plugins; the command group knows which plugin added which command)."""
    group = ctx.find_root().command
    added = group.plugin_commands()
    for row in listing["plugins"]:
        row["commands"] = sorted(n for n, plugin in added.items() if plugin == row["name"])
    listing["commands"] = {n: {"plugin": added[n], "description": group.commands[n].get_short_help_str(80)}
                           for n in sorted(added)}
