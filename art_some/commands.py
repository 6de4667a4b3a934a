"""
Built-in ``art-some`` commands that are not in :mod:`art_some.cli` (which stays short): they are added to the
``art-some`` group through the ``register_commands(cli)`` hook of :mod:`art_some.builtins.commands`, exactly as a
third-party plugin adds its own.

- ``art-some predict``: Cohen et al.'s ``predict.py``, PREDICT over a data set (:mod:`art_some.runs.predict`).
"""
from __future__ import annotations

import click

from art_some.cli import _fail_cleanly, _note, smoothing_options
from art_some.runs.config import parse_options, write_resolved
from art_some.runs.records import tsv_path


def _without(*names: str):
    """Drop options of the shared smoothing options that a command has no use for."""
    def decorate(command: click.Command) -> click.Command:
        command.params = [p for p in command.params if p.name not in names]
        return command

    return decorate


@_without("n0")  # PREDICT has no selection draws
@click.command()
@smoothing_options(n_default=100_000, max_inputs_default=None, verb="Predict")
@click.option("--output", type=click.Path(dir_okay=False), required=True,
              help="JSONL records (resumed if present); Cohen et al.'s predict log goes beside them (.tsv).")
@_fail_cleanly
def predict(options, **values):
    """
    PREDICT (Cohen et al.'s predict.py) over a dataset: the smoothed classifier's class for each input with --n draws,
    or -1 (abstain) when a binomial test of the top two classes cannot separate them at --alpha. Writes JSONL records
    and the predict log (idx label predict correct time) and prints the accuracy, counting abstentions as errors.
    """
    from art_some.runs.certify import config_path
    from art_some.runs.metrics import summary_table
    from art_some.runs.predict import PredictConfig, run_predict

    config = PredictConfig(**values, options=parse_options(options))
    records = run_predict(config, echo=_note)
    write_resolved(click.get_current_context(), config_path(config.output))
    click.echo(summary_table(records))
    click.echo(f"records: {config.output} and {tsv_path(config.output)}")
