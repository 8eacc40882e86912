"""The console script: every subcommand answers --help with its flags; an unknown one is a usage error."""
import pytest

import imagescore

FLAGS = {"demo": "--output", "backfill": "--deadletter", "collect": "--logs", "label": "--judge",
         "analyze": "--labels", "simulate": "--quality-effect", "embed": "--backbone", "train": "--grid",
         "evaluate": "--runs", "export-triton": "--repository", "query": "--formula", "rerank-eval": "--scores",
         "ab-readout": "--control", "simulate-ab": "--srm-loss", "monitor": "--psi-alert",
         "stream": "--deadletter-topic", "stream-demo": "--triton", "replay": "--subscription", "serve-triton": "--grpc-port"}


def test_every_command_is_covered():
    assert set(FLAGS) == set(imagescore.COMMANDS)


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_lists_the_commands_flags(command, capsys):
    try:
        code = imagescore.main([command, "--help"])
    except SystemExit as exc:  # argparse-based commands exit after printing help
        code = exc.code
    assert code == 0
    assert FLAGS[command] in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    assert imagescore.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert imagescore.main([]) == 0 and "commands:" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_shows_defaults(command, capsys):
    try:
        imagescore.main([command, "--help"])
    except SystemExit:
        pass
    assert "(default: " in capsys.readouterr().out
