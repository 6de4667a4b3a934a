"""
The ``art-some`` command: certify a data set, audit it, train, merge shards, run the demo, report on certification
logs, list plugins. Commands parse their options (or a ``--config`` file of them), call a run of
:mod:`art_some.runs` and print what it returns.

Bad input ends with a one-line error naming the argument and exit code 2; output files are only created once
the inputs have been checked.
"""
from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path

import click

from art_some._version import __version__
from art_some.runs.config import (
    config_option,
    parse_budgets,
    parse_denoiser,
    parse_options,
    parse_radii,
    parse_sigmas,
    write_resolved,
)
from art_some.runs.presets import pipeline_options, resolve_pipeline
from art_some.runs.records import tsv_path
from art_some.runs.sources import add_options, data_options, model_options

DEFAULT_RADII = "0,0.25,0.5,0.75,1.0,1.25,1.5,1.75,2.0"
_note = functools.partial(click.echo, err=True)  # a line for the user on standard error (tables go to stdout)


def _fail_cleanly(command):
    """Turn expected errors (bad values, missing or corrupt files) into a one-line message and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, KeyError, OSError) as err:
            if isinstance(err, KeyError):
                message = err.args[0] if err.args else err
            elif isinstance(err, OSError) and err.errno is not None:
                message = _os_error_message(err)
            else:  # our own errors, FileNotFoundError("checkpoint not found: ...") among them
                message = err
            click.echo(f"Error: {message}", err=True)
            sys.exit(2)

    return wrapper


def _os_error_message(err: OSError) -> str:
    """One line for an operating-system error (disk full, read-only or missing folder, ...): what, where, what to do."""
    where = f": {err.filename}" if err.filename else ""
    what = err.strerror or str(err)
    if err.errno == errno.EEXIST:
        what = "a file is in the way of a folder"
    advice = {errno.ENOSPC: "; free some space and run the command again (it resumes)",
              errno.EDQUOT: "; free some space and run the command again (it resumes)",
              errno.EROFS: "; write to another location", errno.EACCES: "; write to another location"}
    return what + where + advice.get(err.errno, "")


def smoothing_options(n_default: int, max_inputs_default, verb: str):
    """The options of every command that builds a smoothed estimator over a data set (certify, evaluate)."""
    options = [
        *model_options("A registered model (art-some plugins lists them), a checkpoint file (art-some train's "
                       "DIR/model.safetensors, a published one, or a state dict with --arch / --model-module)."),
        *data_options(),
        click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True),
        click.option("--estimator", default=None,
                     help="A registered estimator (art-some plugins lists them); default: the checkpoint's, else "
                          "the one the model's registration declares, else some for multi-head models, else smoothed."),
        click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Noise level, the standard deviation per coordinate (default: the checkpoint's sigma)."),
        click.option("--noise", default=None,
                     help="Noise family, a registered noise model: gaussian, laplace, uniform, ... (art-some plugins "
                          "lists them; default: the checkpoint's, else gaussian)."),
        click.option("--norm", type=click.Choice(["l1", "l2", "linf"]), default=None,
                     help="Norm of the certified radii, where the family certifies several (default: the family's "
                          "first: l2 for gaussian, l1 for laplace and uniform)."),
        click.option("--n0", type=click.IntRange(min=1), default=100, show_default=True, help="Selection draws."),
        click.option("--n", type=click.IntRange(min=1), default=n_default, show_default=True,
                     help="Estimation draws."),
        click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.001,
                     show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
                     help="Noisy inputs per forward pass."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--skip", type=click.IntRange(min=1), default=1, show_default=True,
                     help=f"{verb} every skip-th input."),
        click.option("--max-inputs", type=click.IntRange(min=1), default=max_inputs_default,
                     show_default=max_inputs_default is not None, help="Stop after this many inputs."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
                     help="Arithmetic of the vote function (autocast; noise stays fp32). Records say which voted."),
        click.option("--channels-last", is_flag=True,
                     help="Run the vote function's model in channels-last memory format."),
        click.option("--compile", is_flag=True,
                     help="torch.compile the vote function's network (the first batch compiles)."),
        click.option("--option", "options", multiple=True,
                     help="Estimator option name=value (JSON values), repeatable, e.g. for smooth_reduce: "
                          "'patches={\"layout\": \"grid\", \"size\": 8, \"stride\": 1}' resize=10 aggregation=max; "
                          "for denoised_multiscale: 'denoiser={\"name\": \"diffusion\", \"path\": \"unet_dir\"}' "
                          "'sigmas=[0.25, 0.5, 1.0]'; for data_dependent: reference=train|test|FILE.npy, the kNN "
                          "rule's inputs (default: the training split of --dataset)."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return config_option(command)

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="art-some")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of torch (torch.set_num_threads); default: one per core, which on a shared or loaded "
                   "machine is the largest slowdown (up to 2.5x wall on 2 busy cores): give the free cores.")
def cli(threads):
    """art-some: certified robustness by randomized smoothing on ART."""
    if threads is not None:  # torch only when asked: --help stays fast
        import torch

        torch.set_num_threads(threads)


@cli.command()
@smoothing_options(n_default=100_000, max_inputs_default=None, verb="Certify")
@click.option("--output", type=click.Path(dir_okay=False), required=True, help="JSONL records (resumed if present).")
@click.option("--radii", default=None, metavar="R1,R2,...",
              help="Fixed-radius mode: decide for each input whether it is certified at each radius, drawing in "
                   "rounds (up to --n) only until every radius is decided (sequential CERTIFY; at most alpha per "
                   "input over all radii). Also the summary table's radii. Without it: fixed-n CERTIFY (or "
                   f"--sequential) and the table at {DEFAULT_RADII}.")
@click.option("--sequential", is_flag=True,
              help="Radius mode of sequential CERTIFY: draw in rounds (up to --n) and stop each input once the rest "
                   "could add at most --tolerance of its radius, or it must abstain.")
@click.option("--tolerance", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Radius mode's stopping tolerance, a fraction of the radius reachable at --n [default: 0.02].")
@click.option("--bound", type=click.Choice(["mixture", "betting", "union-cp"]), default=None,
              help="Sequential CERTIFY's confidence sequence [default: mixture with --radii, union-cp with "
                   "--sequential].")
@click.option("--shard", default=None, metavar="I/K",
              help="Certify only shard I of K (every K-th input from the I-th), e.g. one per SLURM array task; "
                   "`art-some merge` combines the shards' files. Under torchrun each rank takes its own shard and "
                   "rank 0 merges them into --output.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also save certified accuracy against radius (FILE.png, .pdf or .svg).")
@pipeline_options
@_fail_cleanly
def certify(options, radii, **values):
    """
    Certify a dataset with CERTIFY (Cohen et al.), writing JSONL and TSV records and a summary table; with --radii
    or --sequential, with sequential CERTIFY (each input draws only until it is decided).
    """
    from art_some.runs.certify import CertifyConfig, config_path, run_certify
    from art_some.runs.metrics import summary_table

    values, implied = resolve_pipeline(click.get_current_context(), values)  # --preset, --denoiser (runs/presets.py)
    config = CertifyConfig(**values, options={**implied, **parse_options(options)},
                           radii=None if radii is None else parse_radii(radii))
    records = run_certify(config, echo=_note)
    if records is None:  # a torchrun rank other than 0: the merged table is rank 0's to print
        return
    write_resolved(click.get_current_context(), config_path(config.output))
    click.echo(summary_table(records, parse_radii(radii or DEFAULT_RADII)))
    shard = values["shard"]
    click.echo(f"records: {config.output} and {tsv_path(config.output)}"
               + (f" (shard {shard}; combine the shards with art-some merge)" if shard else "")
               + (f"; plot: {config.plot}" if config.plot else ""))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--output", type=click.Path(), required=True,
              help="The merged JSONL records (a new file), or for audit folders the merged audit's folder.")
@click.option("--radii", default=None, help=f"Radii of the summary table [default: {DEFAULT_RADII}].")
@_fail_cleanly
def merge(files, output, radii):
    """
    Merge the record files of a sharded certify run (--shard I/K) into one JSONL and TSV, or the folders of a
    sharded evaluate run into one audit folder, after checking that they are shards of one run (same settings,
    model, data and versions), that every shard is there once and finished, and that no input is recorded twice.
    """
    from art_some.evaluation.audit import merge_audits
    from art_some.runs.metrics import summary_table
    from art_some.runs.shards import merge_records

    radii = None if radii is None else parse_radii(radii)  # default: a fixed-radius run's, else DEFAULT_RADII
    folders = [Path(f).is_dir() for f in files]
    if all(folders):
        merge_audits(list(files), output)
        click.echo((Path(output) / "audit.md").read_text())
        click.echo(f"reports: {output}/audit.json, audit.csv, audit.md, audit.png ({len(files)} shards)")
        return
    if any(folders):
        raise ValueError("merge takes either the record files of certify shards or the folders of evaluate shards, "
                         "not both")
    records = merge_records(list(files), output)
    click.echo(summary_table(records, radii))
    click.echo(f"records: {output} and {tsv_path(output)} ({len(files)} shards)")


@cli.command()
@smoothing_options(n_default=2000, max_inputs_default=50, verb="Audit")
@click.option("--attack", "attacks", multiple=True,
              help="A registered attack recipe, repeatable (art-some plugins lists them); default: pgd and deepfool "
                   "for L2 certificates, pgd and apgd for L1, pgd and square for L-inf.")
@click.option("--eps", default="0.125,0.25,0.5,1,2", show_default=True,
              help="Budgets of the bounded attacks in the certificate's norm, comma-separated.")
@click.option("--budget", "budgets", multiple=True,
              help="Attack option attack.name=value (JSON values), repeatable, e.g. pgd.max_iter=50.")
@click.option("--verify-n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Fresh draws that confirm each attack point.")
@click.option("--verify-alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.001,
              show_default=True, help="Level of the binomial test that confirms a flip.")
@click.option("--chunk", type=click.IntRange(min=1), default=8, show_default=True,
              help="Inputs per attack batch (records are written after each chunk).")
@click.option("--output-dir", type=click.Path(file_okay=False), required=True,
              help="audit.jsonl (resumed if present), audit.json/.csv/.md/.png and violations/ go here.")
@click.option("--shard", default=None, metavar="I/K",
              help="Audit only shard I of K (every K-th chunk of inputs from the I-th) into --output-dir; "
                   "`art-some merge` combines the shards' folders. Under torchrun each rank audits its own shard "
                   "(into OUTPUT_DIR.shardIofK) and rank 0 merges them into --output-dir.")
@_fail_cleanly
def evaluate(options, attacks, eps, budgets, **values):
    """
    Attack-vs-certificate audit: certify, run ART's attacks on the smoothed classifier, confirm each attack point
    with fresh noise, and report certified vs empirical robust accuracy and any certificate violation. Each input
    costs attacks of many Monte-Carlo gradient steps, hence smaller defaults than certify's (50 inputs, n 2,000).
    """
    from art_some.runs.evaluate import EvaluateConfig, config_path, run_evaluate

    config = EvaluateConfig(**values, options=parse_options(options), attacks=list(attacks) or None,
                            eps=parse_radii(eps), budgets=parse_budgets(budgets))
    result = run_evaluate(config, echo=_note)
    if result is None:  # a torchrun rank other than 0: the merged reports are rank 0's to print
        return
    write_resolved(click.get_current_context(), config_path(config.output_dir))
    out, shard = Path(config.output_dir), values["shard"]
    click.echo((out / "audit.md").read_text())
    click.echo(f"reports: {out}/audit.json, audit.csv, audit.md, audit.png"
               + (f"; {len(result.violations)} violation(s) saved in {out / 'violations'}" if result.violations
                  else "")
               + (f" (shard {shard}; combine the shards with art-some merge)" if shard else ""))


@cli.command()
@click.option("--method", required=True,
              help="A registered trainer (art-some plugins lists them; docs/trainers.rst gives their --option's).")
@add_options(model_options("A registered model (art-some plugins lists them), or a checkpoint file whose weights the "
                           "run starts from (fine-tuning; a denoiser-tuning method's frozen classifier)."))
@add_options(data_options())
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True)
@click.option("--noise", default="gaussian", show_default=True,
              help="Training noise, a registered noise model (art-some plugins lists them); the checkpoint records it "
                   "and certify smooths with it.")
@click.option("--norm", type=click.Choice(["l1", "l2", "linf"]), default=None,
              help="Norm of the radii certify will certify (default: the noise family's first).")
@click.option("--sigmas", default=None,
              help="Noise levels of the denoised methods, comma-separated, e.g. 0.25,0.5,1.0 (default: --sigma).")
@click.option("--denoiser", default=None,
              help="Denoiser of the denoised methods: a registered denoiser (art-some plugins lists them) or a "
                   "JSON dict, e.g. '{\"name\": \"diffusion\", \"path\": \"unet_dir\"}'. A tuned or "
                   "random one is saved in --output-dir/denoiser, and certify finds it.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Loader batch (split into m mini-batches by SOME/SmoothMix); default 64 for digits, else 256.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None,
              help="Default (and of --lr, --momentum, --weight-decay): the method's, from its registration "
                   "(docs/trainers.rst lists them; else sgd, lr 0.1, momentum 0.9, weight decay 1e-4).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--momentum", type=click.FloatRange(min=0), default=None)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None)
@click.option("--tensorboard", type=click.Path(file_okay=False), default=None,
              help="Also log each epoch to TensorBoard in this folder (needs: pip install tensorboard).")
@click.option("--lr-step", type=click.IntRange(min=1), default=None,
              help="Epochs between learning-rate drops by --lr-gamma. Default: a third of --epochs (as 50 of 150); "
                   "runs under 9 epochs keep the rate constant (a drop after one epoch stops them learning).")
@click.option("--lr-gamma", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True)
@click.option("--num-heads", type=click.IntRange(min=1), default=None, help="Heads of a multi-head (some_*) model.")
@click.option("--option", "options", multiple=True,
              help="Trainer option name=value, repeatable (e.g. base=consistency, lambda_last=1.0).")
@click.option("--no-augment", is_flag=True, help="Skip the dataset's training augmentation (crop/flip).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader workers.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--output-dir", type=click.Path(file_okay=False), required=True,
              help="Checkpoints go here; an interrupted run in it is resumed.")
@click.option("--restart", is_flag=True, help="Discard a run already in --output-dir.")
@config_option
@_fail_cleanly
def train(method, model, dataset, data_root, sigma, noise, norm, sigmas, denoiser, epochs, batch_size, optimizer, lr,
          momentum, weight_decay, tensorboard, lr_step, lr_gamma, num_heads, options, no_augment, seed, workers, device,
          output_dir, restart, **source):
    """
    Train a base classifier for smoothing with a registered trainer, checkpointing every epoch (resumable).
    Under torchrun the run is data-parallel (DistributedDataParallel; rank 0 writes the files).
    """
    from art_some.runs.estimator import resolve_device
    from art_some.runs.train import TrainConfig, check_names, config_path
    from art_some.runs.train import train as run_training

    check_names(method, model, source["model_module"])
    config = TrainConfig(method=method, model=model, dataset=dataset, sigma=sigma, noise=noise, norm=norm, **source,
                         epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, lr_step=lr_step, lr_gamma=lr_gamma, seed=seed,
                         augment=not no_augment, model_kwargs={} if num_heads is None else {"num_heads": num_heads},
                         trainer_kwargs=parse_options(options), denoiser=parse_denoiser(denoiser),
                         sigmas=None if sigmas is None else parse_sigmas(sigmas))
    history = run_training(config, output_dir, device=resolve_device(device), data_root=data_root, workers=workers,
                           restart=restart, echo=click.echo, tensorboard=tensorboard)
    if history is not None:
        write_resolved(click.get_current_context(), config_path(output_dir))
        click.echo(f"final loss {history[-1]['loss']:.4f}; checkpoint: {Path(output_dir) / 'model.safetensors'}")


@cli.command()
@click.option("--output-dir", type=click.Path(file_okay=False), default="art_some_demo", show_default=True)
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--n0", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--n", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.001, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-inputs", type=click.IntRange(min=1), default=None, help="Certify only the first inputs.")
@click.option("--retrain", is_flag=True, help="Discard earlier outputs in --output-dir and start over.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_fail_cleanly
def demo(**values):
    """Train a small CNN on the embedded digits with Gaussian noise, certify the test split, plot and report."""
    from art_some.runs.demo import run_demo
    from art_some.runs.metrics import summary_table

    records, paths = run_demo(**values, echo=click.echo)
    click.echo(summary_table(records, parse_radii(DEFAULT_RADII)))
    click.echo(f"records: {paths['records']}, {tsv_path(paths['records'])}; plot: {paths['plot']}; "
               f"model: {paths['model']}")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--radii", default=None,
              help=f"Comma-separated radii [default: a fixed-radius run's own, else {DEFAULT_RADII}].")
@click.option("--format", "form", type=click.Choice(["text", "markdown", "csv", "latex"]), default="text",
              show_default=True, help="text: provenance and tables; markdown, csv, latex: one table, a row per file.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also save certified accuracy against radius, a line per file (FILE.png, .pdf or .svg).")
@_fail_cleanly
def report(files, radii, form, plot):
    """
    Print where the records come from (the JSONL header: versions, estimator, settings, weights hash, data), then
    certified accuracy at radii, ACR and abstention rate (PREDICT runs: accuracy, abstention rate), for JSONL records
    or community TSV logs; several files side by side.
    """
    from art_some.runs.report import run_report

    click.echo(run_report(files, None if radii is None else parse_radii(radii), form, plot))


@cli.command()
@_fail_cleanly
def plugins():
    """List registered estimators, trainers, models, datasets, ... and the distribution providing each."""
    from art_some.plugins import KINDS, entries

    for kind in KINDS:
        found = entries(kind)
        click.echo(f"{kind}:" + ("" if found else " (none)"))
        for name, entry in sorted(found.items()):
            description = entry.meta.get("description", "")
            click.echo(f"  {name:<22} {entry.distribution:<24} {description}")


def main(argv=None):
    """Entry point of the ``art-some`` console script: the built-in commands and every plugin's."""
    from art_some.plugins import add_commands

    add_commands(cli)
    cli.main(args=argv, prog_name="art-some")


if __name__ == "__main__":
    main()
