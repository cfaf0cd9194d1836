"""The CLI loads commands on first use: `ablate --help` imports none of them yet prints what click would
print for the real commands, and every entry of COMMANDS is the command it names."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from ablate.cli import COMMANDS, main


def test_every_entry_is_the_command_it_names_with_its_own_help():
    for name in COMMANDS:
        command = main.get_command(click.Context(main), name)
        assert isinstance(command, click.Command) and command.name == name
        assert COMMANDS[name][2] == command.get_short_help_str(limit=10_000), name
    assert main.get_command(click.Context(main), "nonsense") is None


def test_help_lists_the_commands_as_click_would():
    eager = click.Group(name="ablate", help=main.help, params=main.params)
    for name in COMMANDS:
        eager.add_command(main.get_command(click.Context(main), name))
    ours = CliRunner().invoke(main, ["--help"], terminal_width=100)
    theirs = CliRunner().invoke(eager, ["--help"], terminal_width=100)
    assert ours.exit_code == 0 and ours.output.split("Commands:")[1] == theirs.output.split("Commands:")[1]


def test_help_and_status_import_neither_torch_nor_transformers():
    code = (
        "import sys; from click.testing import CliRunner; from ablate.cli import main; "
        "CliRunner().invoke(main, ['--help']); CliRunner().invoke(main, ['status', '--db', 'sqlite://']); "
        "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _leaves(command: click.Command, name: str) -> dict[str, click.Command]:
    if isinstance(command, click.Group):
        return {
            f"{name} {sub}": leaf
            for sub, c in command.commands.items()
            for sub, leaf in _leaves(c, sub).items()
        }
    return {name: command}


def test_every_command_takes_json_and_long_ones_take_quiet():
    commands: dict[str, click.Command] = {}
    for name in COMMANDS:
        commands |= _leaves(main.get_command(click.Context(main), name), name)
    options = {name: {o for p in c.params for o in p.opts} for name, c in commands.items()}
    assert [name for name, opts in options.items() if "--json" not in opts] == []
    long_running = ("submit", "build", "prune", "eval", "distill", "correct")
    assert [name for name in long_running if "--quiet" not in options[name]] == []
