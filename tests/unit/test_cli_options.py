"""`batch-relay`'s command line as the AWS CLIs have it: options before or after the command,
`--version`, and every command and option described in `--help`."""

from __future__ import annotations

import argparse
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from relay_ops import cli

ROOT = Path(__file__).resolve().parents[2]


def parsers() -> dict[str, argparse.ArgumentParser]:
    top = cli.parser()
    [commands] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return {"batch-relay": top} | dict(commands.choices)


def test_every_command_and_option_is_described():
    undescribed = [
        f"{name} {action.option_strings or action.dest}"
        for name, p in parsers().items()
        for action in p._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert undescribed == []
    assert set(cli.COMMANDS) == set(parsers()) - {"batch-relay"}
    [commands] = [a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert all(choice.help for choice in commands._choices_actions)


def test_help_shows_each_command_with_its_words(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    shown = capsys.readouterr().out
    assert done.value.code == 0
    for name, p in parsers().items():
        if name != "batch-relay":
            assert f"    {name} " in shown and (p.description or "")[:30] in " ".join(shown.split())


@pytest.mark.parametrize("command", ["status r-1", "report --format json", "teardown --dry-run"])
def test_the_stack_and_aws_options_go_before_or_after_the_command(command):
    options = ["--stack", "relay", "--region", "eu-west-1", "--profile", "ops", "--table", "t"]
    before = vars(cli.parse_args([*options, *command.split()]))
    after = vars(cli.parse_args([*command.split(), *options]))
    split = vars(cli.parse_args([*options[:4], *command.split(), *options[4:]]))
    assert before == after == split
    assert (before["stack"], before["region"], before["profile"], before["table"]) == (
        "relay",
        "eu-west-1",
        "ops",
        "t",
    )


def test_an_option_not_given_is_none_wherever_the_others_are():
    args = vars(cli.parse_args(["status", "r-1", "--region", "eu-west-1"]))
    assert {k: args[k] for k in cli.GLOBAL} == dict.fromkeys(cli.GLOBAL) | {"region": "eu-west-1"}


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"batch-relay {version('batch-relay')}"


def test_the_console_script_is_this_main_and_its_needs_are_the_package_s_own():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["batch-relay"] == "relay_ops.cli:main"
    # `pip install batch-relay` alone must give a working command: what it draws with is no extra.
    base = {d.split(">")[0].split("[")[0].strip() for d in project["dependencies"]}
    assert {"rich", "plotly", "boto3", "pydantic", "anthropic"} <= base
    layer = (ROOT / "layers" / "relay" / "requirements.in").read_text()
    assert "rich" not in layer and "plotly" not in layer
