"""Click commands, one module per workflow stage; ablate/cli.py registers them."""

from __future__ import annotations

import click

from ablate.track.urls import DEFAULT_DB


def db_option(f):
    """`--db`, the results database, as every command that reads or writes the records takes it."""
    return click.option(
        "--db",
        default=DEFAULT_DB,
        show_default=True,
        envvar="ABLATE_DB",
        help="Results database URL (the spec's tracking.db); $ABLATE_DB keeps a password off the command line.",
    )(f)


def out_folder_option(help: str, *, dest: str = "out", required: bool = False):
    """`--out`, the folder a command writes (a checkpoint, a build)."""
    return click.option(
        "--out", dest, required=required, default=None, type=click.Path(file_okay=False), help=help
    )
