"""The built-in commands that :mod:`art_some.cli` does not hold itself (``art-some predict``), added like a plugin's."""
from art_some.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    from art_some.commands import predict

    cli.add_command(predict)
