"""The `ablate` command line: parse, call, print. Errors a user can fix exit 2 with one clear message."""

from __future__ import annotations

import importlib
import json
import logging
import sys

import click

from ablate.errors import AblateError
from ablate.secrets import install_log_redaction, redact_text

# name -> (module, attribute, one-line help). Commands are imported when run, not at start-up: several
# pull in torch and transformers (seconds), which `ablate status`, `report` or `--help` never need.
# tests/test_cli.py checks each line here against the command itself.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("ablate.commands.build", "build_command", "Build the final model of an experiment (NAME) or spec file (SPEC)."),
    "cancel": ("ablate.commands.submit", "cancel_command", "Ask a running submission of NAME to stop its trials (recorded results are kept)."),
    "correct": ("ablate.commands.distill", "correct_command", "Teacher correction: fine-tune the teacher on the distillation corpus (loss ce) before pruning."),
    "data": ("ablate.commands.data", "data_command", "Tokenize a spec's data sources into shards, and look at what the loader reads from them."),
    "distill": ("ablate.commands.distill", "distill_command", "Retrain a pruned student from its teacher (or with ce / from scratch, as baselines)."),
    "eval": ("ablate.commands.prune", "eval_command", "Held-out LM loss and perplexity of a model (and KL / top-1 agreement with a teacher), and its lm-eval benchmarks with --tasks."),
    "plan": ("ablate.commands.plan", "plan_command", "Show SPEC's trials, shared stages, exact parameter counts and compute, without loading weights."),
    "prune": ("ablate.commands.prune", "prune_command", "Score every head, neuron, channel and layer of a model and trim it to --target."),
    "report": ("ablate.commands.report", "report_command", "Write OUT/NAME/report.md: trial table, paired comparisons with best-practice verdicts, plots, the best trial and the recipe `ablate build` will use."),
    "status": ("ablate.commands.submit", "status_command", "What ran, what failed and why, what is left (all experiments without NAME)."),
    "submit": ("ablate.commands.submit", "submit_command", "Run SPEC: shared stages once, trials on Ray; resumes and never redoes finished work."),
    "ui": ("ablate.commands.report", "ui_command", "Start the MLflow UI on NAME's tracking store and print the URL of the run-comparison view with NAME's trials selected (without NAME: the only experiment in the records, else the experiment list)."),
    "validate": ("ablate.commands.plan", "validate_command", "Check SPEC and report every problem with its file, line and path (exit 2 if any)."),
}  # fmt: skip


class AblateGroup(click.Group):
    """Commands loaded on first use (COMMANDS); AblateError becomes a clean message and exit 2
    (--debug shows the traceback)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of --help from COMMANDS, importing none of them."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, _shorten(COMMANDS[name][2], limit)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        as_json = _wants_json(ctx)
        debug = bool(ctx.obj and ctx.obj.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except AblateError as exc:
            if debug:
                raise
            fail(str(exc), 2, as_json)
        except click.ClickException as exc:  # a bad option or argument: click's own message and exit 2
            if not as_json:
                raise
            fail(exc.format_message(), exc.exit_code, as_json)
        except Exception as exc:  # a bug or a crash: under --json still one JSON object on stdout
            if debug or not as_json:
                raise
            fail(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", 1, as_json)


def _wants_json(ctx: click.Context) -> bool:
    """Whether the command line asks for --json (read before the command parses it, so that an error
    while parsing it is JSON too)."""
    protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args  # click < 8.2
    args = [*protected, *ctx.args]
    return "--json" in args[: args.index("--")] if "--" in args else "--json" in args


def fail(message: str, code: int, as_json: bool, **extra: object) -> None:
    """End the command with `message` on stderr and exit `code`; under --json stdout also gets one JSON
    object {"ok": false, "error": ..., "exit_code": ...} (plus `extra`), so a script always parses."""
    message = redact_text(message)
    if as_json:
        click.echo(
            json.dumps({"ok": False, "error": message, "exit_code": code, **extra}, indent=2, default=str)
        )
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


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
    install_log_redaction()  # log lines leave the process: mask any password in them


def _shorten(text: str, limit: int) -> str:
    """What click's get_short_help_str makes of a help text: cut at a word, with an ellipsis."""
    return click.Command(None, help=text).get_short_help_str(max(limit, 45))
