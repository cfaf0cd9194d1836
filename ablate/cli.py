"""The `ablate` command line: parse, call, print. Errors a user can fix exit 2 with one clear message."""

from __future__ import annotations

import logging
import sys

import click

from ablate.errors import AblateError


class AblateGroup(click.Group):
    """Turns AblateError into a clean message and exit 2; --debug shows the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AblateError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=AblateGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="ablate")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Declarative ablations for LLM compression: prune, distill, compare, build."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


# --- commands registered by stage modules (one line each; keep sorted) ---
from ablate.commands.build import build_command  # noqa: E402
from ablate.commands.distill import correct_command, distill_command  # noqa: E402
from ablate.commands.plan import plan_command, validate_command  # noqa: E402
from ablate.commands.prune import eval_command, prune_command  # noqa: E402
from ablate.commands.report import report_command, ui_command  # noqa: E402
from ablate.commands.submit import cancel_command, status_command, submit_command  # noqa: E402

main.add_command(build_command)
main.add_command(eval_command)
main.add_command(plan_command)
main.add_command(prune_command)
main.add_command(validate_command)
main.add_command(submit_command)
main.add_command(status_command)
main.add_command(cancel_command)
main.add_command(distill_command)
main.add_command(correct_command)
main.add_command(report_command)
main.add_command(ui_command)
