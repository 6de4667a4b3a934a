"""
The ``art-some`` command: certify a data set, run the demo, report on certification logs, list plugins.

Bad input ends with a one-line error naming the argument and exit code 2; output files are only created once
the inputs have been checked.
"""
from __future__ import annotations

import errno
import functools
import math
import os
import shutil
import sys
from pathlib import Path

import click

from art_some import __version__

DEFAULT_RADII = "0,0.25,0.5,0.75,1.0,1.25,1.5,1.75,2.0"


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


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    return name


def build_estimator(estimator: str, model, info: dict, *, sigma, n0, alpha, batch_size, seed, device, optimizer=None,
                    options=None):
    """
    Wrap ``model`` in the registered estimator ``estimator`` with the data set's conventions; ``options`` are the
    estimator's own keyword arguments (e.g. a patch layout for ``smooth_reduce``). The command line's name for
    :func:`art_some.estimators.factory.create_estimator`.
    """
    from art_some.estimators.factory import create_estimator

    return create_estimator(estimator, model, info, sigma=sigma, n0=n0, alpha=alpha, batch_size=batch_size,
                            seed=seed, device=device, optimizer=optimizer, options=options)


def _parse_radii(text: str):
    try:
        radii = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--radii must be comma-separated numbers, got {text!r}") from None
    if not radii or min(radii) < 0 or not all(math.isfinite(r) for r in radii):
        raise ValueError(f"--radii must hold finite non-negative numbers, got {text!r}")
    return radii


def _speed_option(ctx, param, value):
    """The vote function's speed options, kept aside and added to the estimator's options when they are set."""
    if value not in (None, False, "fp32"):
        ctx.meta.setdefault("art_some_speed", {})[param.name] = value
    return value


def smoothing_options(n_default: int, max_inputs_default, verb: str):
    """The options of every command that builds a smoothed estimator over a data set (certify, evaluate)."""
    options = [
        click.option("--model", "model_ref", required=True, help="A registered model name or a checkpoint file."),
        click.option("--arch", default=None,
                     help="A published checkpoint's architecture: cifar_resnet20, cifar_resnet110, resnet50 "
                          "(Cohen et al., Consistency, SmoothMix), smoothadv_cifar_resnet110, smoothadv_resnet50 "
                          "(SmoothAdv's repository), some_cifar_resnet20, some_cifar_resnet110, some_resnet50 (SOME), "
                          "macer_resnet110 (MACER); default: the file's 'arch' field, else its keys. See "
                          "docs/published.rst."),
        click.option("--dataset", default="digits", show_default=True, help="A registered dataset name."),
        click.option("--data-root", type=click.Path(), default=None, help="Folder holding the dataset (not digits)."),
        click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True),
        click.option("--estimator", default=None,
                     help="A registered estimator name (default: the checkpoint's, else some for multi-head models, "
                          "else smoothed)."),
        click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Noise level (default: the checkpoint's sigma)."),
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
                     expose_value=False, callback=_speed_option,
                     help="Arithmetic of the vote function (autocast; noise stays fp32). Records say which voted."),
        click.option("--channels-last", is_flag=True, expose_value=False, callback=_speed_option,
                     help="Run the vote function's model in channels-last memory format."),
        click.option("--compile", is_flag=True, expose_value=False, callback=_speed_option,
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
        return command

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="art-some")
def cli():
    """art-some: certified robustness by randomized smoothing on ART."""


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
@click.option("--shard", default=None, metavar="I/K",
              help="Certify only shard I of K (every K-th input from the I-th), e.g. one per SLURM array task; "
                   "`art-some merge` combines the shards' files. Under torchrun each rank takes its own shard and "
                   "rank 0 merges them into --output.")
@_fail_cleanly
def certify(model_ref, dataset, data_root, split, estimator, sigma, n0, n, alpha, batch_size, seed, skip, max_inputs,
            output, device, radii, options, arch=None, shard=None, sequential=False, tolerance=None):
    """
    Certify a dataset with CERTIFY (Cohen et al.), writing JSONL and TSV records and a summary table; with --radii
    or --sequential, with sequential CERTIFY (each input draws only until it is decided).
    """
    from art_some.core.results import summary_table
    from art_some.evaluation import certify_dataset
    from art_some.evaluation.runner import merge_torchrun_shards, shard_path

    plan = None
    if radii is not None and sequential:
        raise ValueError("give --radii (fixed-radius mode) or --sequential (radius mode), not both")
    if radii is not None:
        plan = {"radii": _parse_radii(radii)}
    elif sequential:
        plan = {}
    if tolerance is not None:
        if plan is None or "radii" in plan:
            raise ValueError("--tolerance is the radius mode's stopping rule: give it with --sequential (and without "
                             "--radii)")
        plan["tolerance"] = tolerance
    radii = _parse_radii(DEFAULT_RADII if radii is None else radii)
    shard, ranked = _shards(shard, device)
    clf, data, estimator = _smoothed_from_options(model_ref, dataset, data_root, split, estimator, sigma, n0, alpha,
                                                  batch_size, seed, device, options, arch=arch)
    _warn_small_n(n, n0, clf.scale, alpha)
    indices = list(range(0, len(data), skip))[:max_inputs]
    records = certify_dataset(clf, data, indices, output if ranked is None else shard_path(output, ranked), n=n,
                              method=estimator, run_info=_run_info(dataset, split, model_ref, data_root), echo=_note,
                              shard=shard or ranked, sequential=plan)
    if ranked is not None:
        records = merge_torchrun_shards(output, ranked)
        if records is None:  # not rank 0: the merged table is rank 0's to print
            return
    click.echo(summary_table(records, radii))
    click.echo(f"records: {output} and {Path(output).with_suffix('.tsv')}"
               + (f" (shard {shard[0]}/{shard[1]}; combine the shards with art-some merge)" if shard else ""))


def _shards(shard, device):
    """
    The shard a command runs: ``(--shard, None)`` without torchrun, ``(None, (rank, world size))`` under it (each
    rank on its own GPU with --device cuda); (None, None) for a run in one process.
    """
    from art_some.evaluation.runner import check_shard, torchrun_shard

    shard = None if shard is None else check_shard(shard)
    ranked = torchrun_shard()
    if ranked is not None and shard is not None:
        raise ValueError("--shard is for runs without torchrun; under torchrun every rank takes its own shard")
    if ranked is not None and device == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return shard, ranked


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--output", type=click.Path(), required=True,
              help="The merged JSONL records (a new file), or for audit folders the merged audit's folder.")
@click.option("--radii", default=DEFAULT_RADII, show_default=True, help="Radii of the summary table.")
@_fail_cleanly
def merge(files, output, radii):
    """
    Merge the record files of a sharded certify run (--shard I/K) into one JSONL and TSV, or the folders of a
    sharded evaluate run into one audit folder, after checking that they are shards of one run (same settings,
    model, data and versions), that every shard is there once and finished, and that no input is recorded twice.
    """
    from art_some.core.results import summary_table
    from art_some.evaluation.audit import merge_audits
    from art_some.evaluation.runner import merge_records

    radii = _parse_radii(radii)
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
    click.echo(f"records: {output} and {Path(output).with_suffix('.tsv')} ({len(files)} shards)")



@cli.command()
@smoothing_options(n_default=2000, max_inputs_default=50, verb="Audit")
@click.option("--attack", "attacks", multiple=True, default=("pgd", "deepfool"), show_default=True,
              help="A registered attack recipe, repeatable (pgd, apgd, square, carlini, deepfool, hopskipjump, "
                   "boundary, and plugins').")
@click.option("--eps", "eps_grid", default="0.125,0.25,0.5,1,2", show_default=True,
              help="L2 budgets of the bounded attacks (pgd, apgd, square), comma-separated.")
@click.option("--budget", "budget_options", multiple=True,
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
def evaluate(model_ref, dataset, data_root, split, estimator, sigma, n0, n, alpha, batch_size, seed, skip, max_inputs,
             attacks, eps_grid, budget_options, verify_n, verify_alpha, chunk, output_dir, device, options,
             arch=None, shard=None):
    """
    Attack-vs-certificate audit: certify, run ART's attacks on the smoothed classifier, confirm each attack point
    with fresh noise, and report certified vs empirical robust accuracy and any certificate violation.
    """
    import numpy as np

    from art_some.evaluation import audit
    from art_some.evaluation.audit import merge_audits, merged_audit_before
    from art_some.evaluation.runner import on_rank_zero_after_all

    eps = _parse_radii(eps_grid)
    shard, ranked = _shards(shard, device)
    budgets = {}
    for name, value in _parse_options([o.replace(".", "__", 1) for o in budget_options]).items():
        attack, _, key = name.partition("__")
        if not key:
            raise ValueError(f"--budget must look like attack.name=value, got {name!r}")
        budgets.setdefault(attack, {})[key] = value
    clf, data, _ = _smoothed_from_options(model_ref, dataset, data_root, split, estimator, sigma, n0, alpha,
                                          batch_size, seed, device, options, arch=arch)
    _warn_small_n(n, n0, clf.scale, alpha)
    indices = list(range(0, len(data), skip))[:max_inputs]
    x = np.stack([np.asarray(data[i][0], dtype=np.float32) for i in indices])
    y = np.array([int(data[i][1]) for i in indices])
    folder = output_dir if ranked is None else shard_folder(output_dir, ranked)
    result = audit(clf, x, y, attacks=list(attacks), n=n, n0=n0, alpha=alpha, eps=eps, budgets=budgets,
                   verify_n=verify_n, verify_alpha=verify_alpha, indices=indices, output_dir=folder,
                   batch_size=chunk, run_info=_run_info(dataset, split, model_ref, data_root), echo=_note,
                   shard=shard or ranked)
    if ranked is not None:
        def merge():
            shards = [shard_folder(output_dir, (i, ranked[1])) for i in range(ranked[1])]
            return (merged_audit_before(output_dir, shards[0]) if (Path(output_dir) / "audit.jsonl").exists()
                    else merge_audits(shards, output_dir))

        result = on_rank_zero_after_all(ranked, merge)
        if result is None:  # not rank 0: the merged reports are rank 0's to print
            return
    click.echo((Path(output_dir) / "audit.md").read_text())
    click.echo(f"reports: {Path(output_dir)}/audit.json, audit.csv, audit.md, audit.png"
               + (f"; {len(result.violations)} violation(s) saved in {Path(output_dir) / 'violations'}"
                  if result.violations else "")
               + (f" (shard {shard[0]}/{shard[1]}; combine the shards with art-some merge)" if shard else ""))


def shard_folder(output_dir, shard) -> Path:
    """The audit folder of rank ``shard`` of a torchrun run whose merged audit goes to ``output_dir``."""
    output_dir = Path(output_dir)
    return output_dir.with_name(f"{output_dir.name}.shard{shard[0]}of{shard[1]}")


def _run_info(dataset, split, model_ref, data_root=None) -> dict:
    """
    The header entries only the command line knows: the data set and split (compared on resume), and where the
    model and data were read from (recorded, not compared: the weights hash and the inputs' hashes are).
    """
    return {"dataset": dataset, "split": split,
            "source": {"model": str(model_ref), "data_root": None if data_root is None else str(data_root)}}


def _note(message: str) -> None:
    """A line for the user on standard error (records and tables go to standard output)."""
    click.echo(message, err=True)


def _warn_small_n(n: int, n0: int, sigma: float, alpha: float) -> None:
    """Warn when the estimation draws are fewer than the selection draws: the radius cap comes from n."""
    if n >= n0:
        return
    from art_some.core.stats import max_certifiable_radius

    _note(f"Warning: --n {n} is below --n0 {n0}, which is unusual: n0 only picks the class and the n draws bound "
          f"its probability, so with --n {n} no radius exceeds sigma * Phi^-1(alpha^(1/n)) = "
          f"{max_certifiable_radius(sigma, n, alpha):.3f} (n is usually 100 to 1000 times n0)")


def _is_checkpoint(model_ref: str) -> bool:
    return Path(model_ref).suffix in (".safetensors", ".pt", ".pth") or Path(model_ref).exists()


def _smoothed_from_options(model_ref, dataset, data_root, split, estimator, sigma, n0, alpha, batch_size, seed, device,
                           options, arch=None):
    """The smoothed estimator that certify and evaluate build from their options: (estimator, data, its name)."""
    from art_some.data import load_dataset
    from art_some.models import create_model
    from art_some.plugins import registered

    checkpoint = _is_checkpoint(model_ref)
    if arch is not None and not Path(model_ref).is_file():
        raise ValueError(f"--arch {arch} names a published checkpoint's architecture, but --model {model_ref!r} is "
                         "not a file")
    if not checkpoint:
        if model_ref not in registered("models"):
            known = ", ".join(sorted(registered("models")))
            raise ValueError(f"--model {model_ref!r} is neither a checkpoint file nor a registered model ({known})")
        if sigma is None:
            raise ValueError(f"--model {model_ref!r} is a registered model name, randomly initialised, so it needs "
                             "--sigma; or give a checkpoint file (DIR/model.safetensors from art-some train)")
    device = _device(device)
    data, info = load_dataset(dataset, root=data_root, split=split)
    defaults = {}
    if checkpoint:
        model, meta = _load_model_file(model_ref, arch, device)
        if meta.get("format") in PUBLISHED_FORMATS:  # the network's own normalisation, not the data set's default
            info = {**info, "mean": meta["mean"], "std": meta["std"]}
        for key in ("num_classes", "input_shape"):
            if key in meta and str(list(meta[key]) if key == "input_shape" else meta[key]) != str(
                list(info[key]) if key == "input_shape" else info[key]
            ):
                raise ValueError(f"--model checkpoint has {key} {meta[key]} but dataset {dataset!r} has {info[key]}")
        if sigma is None and meta.get("sigma") is None:
            raise ValueError(f"--sigma is required: checkpoint {model_ref} records no sigma")
        if estimator in (None, meta.get("estimator")):
            defaults = _checkpoint_options(meta, model_ref, sigma_given=sigma is not None)
        sigma = sigma if sigma is not None else meta["sigma"]
        estimator = estimator or meta.get("estimator")
    else:
        import torch

        _note(f"Warning: {model_ref!r} is randomly initialised from --seed (no checkpoint given)")
        torch.manual_seed(seed)
        model = create_model(model_ref, num_classes=info["num_classes"])
    estimator = estimator or ("some" if callable(getattr(model, "head_logits", None)) else "smoothed")
    context = click.get_current_context(silent=True)
    speed = context.meta.get("art_some_speed", {}) if context is not None else {}
    options = _knn_reference(estimator, {**defaults, **_parse_options(options), **speed}, dataset, data_root)
    clf = build_estimator(estimator, model, info, sigma=sigma, n0=n0, alpha=alpha, batch_size=batch_size, seed=seed,
                          device=device, options=options)
    return clf, data, estimator


PUBLISHED_FORMATS = ("cohen", "some", "macer")


def _load_model_file(model_ref, arch, device):
    """An art-some checkpoint (load_checkpoint), or a released one (load_published) when --arch is given or the
    file is in one of the published formats: ``(model, meta)``."""
    from art_some.models import load_checkpoint, load_published
    from art_some.models.published import is_published

    if arch is not None or is_published(model_ref):
        return load_published(model_ref, arch=arch, device=device)
    return load_checkpoint(model_ref, device=device)


DENOISER_FILES = ("path", "checkpoint", "unet_config")


def _checkpoint_options(meta: dict, model_ref, sigma_given: bool) -> dict:
    """
    The estimator options a checkpoint records (a cascade's denoiser and levels, from art-some train), its
    denoiser's files relative to the checkpoint's folder; an explicit --sigma replaces the recorded levels.
    """
    options = dict(meta.get("estimator_options") or {})
    if sigma_given:
        options.pop("sigmas", None)
    denoiser = options.get("denoiser")
    if isinstance(denoiser, dict):
        folder = Path(model_ref).parent
        options["denoiser"] = {k: str(folder / v) if k in DENOISER_FILES and isinstance(v, str) else v
                               for k, v in denoiser.items()}
    return options


# Inputs the training split may hold to be the kNN reference by default: the reference is held in memory and its
# offset (the median kNN distance) takes N^2 distances.
REFERENCE_LIMIT = 20_000


def _knn_reference(estimator: str, options: dict, dataset: str, data_root) -> dict:
    """
    The kNN sigma rule's reference inputs (data_dependent): ``--option reference=train|test`` (a split of --dataset)
    or ``reference=FILE.npy``; by default the training split, when it has at most :data:`REFERENCE_LIMIT` inputs.
    """
    import inspect

    import numpy as np

    from art_some.data import load_dataset
    from art_some.estimators.factory import option_default
    from art_some.plugins import get

    cls = get("estimators", estimator)
    value = options.get("reference")
    if "reference" not in inspect.signature(cls.__init__).parameters or not isinstance(value, (str, type(None))):
        return options  # nothing to find (or the inputs themselves, as a JSON list)
    if options.get("sigma_rule", option_default(cls, "sigma_rule")) != "knn":
        return options
    if value is None or value in ("train", "test"):
        split = value or "train"
        data, _ = load_dataset(dataset, root=data_root, split=split)
        if value is None and len(data) > REFERENCE_LIMIT:
            raise ValueError(f"--estimator {estimator}: the train split of {dataset!r} has {len(data)} inputs, too "
                             f"many for the default kNN reference (at most {REFERENCE_LIMIT}); give --option "
                             "reference=FILE.npy (a sample of it) or --option reference=train to use them all")
        reference = np.stack([np.asarray(data[i][0], dtype=np.float32) for i in range(len(data))])
        _note(f"kNN reference: the {split} split of {dataset} ({len(reference)} inputs)")
    else:
        path = Path(value)
        if path.suffix != ".npy" or not path.is_file():
            raise ValueError(f"--option reference must be train, test or a .npy file of inputs, got {value!r}")
        reference = np.load(path, allow_pickle=False)
    return {**options, "reference": reference}


def _parse_options(options) -> dict:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, true/false, null), else strings."""
    import json

    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--option must look like name=value, got {option!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


# Loader batches of the training command per data set: 256 is the papers' CIFAR-10/ImageNet batch, but it cuts
# the 1437 training digits into 6 steps an epoch, too few to learn anything in a short run.
TRAIN_BATCH_SIZES = {"digits": 64}


@cli.command()
@click.option("--method", required=True,
              help="A registered trainer: gaussian, consistency, smoothmix, smoothadv, macer, crt (--option "
                   "teacher=PATH), ddrs (--option base=gaussian|smoothadv|macer), some, denoised_classifier and "
                   "diffusion_calibration (both with --denoiser), ...")
@click.option("--model", "model_name", required=True,
              help="A registered model name (some_* for SOME), or a checkpoint file whose weights the run starts "
                   "from (fine-tuning; diffusion_calibration's frozen classifier).")
@click.option("--dataset", default="digits", show_default=True, help="A registered dataset name.")
@click.option("--data-root", type=click.Path(), default=None, help="Folder holding the dataset (not digits).")
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True)
@click.option("--sigmas", default=None,
              help="Noise levels of the denoised methods, comma-separated, e.g. 0.25,0.5,1.0 (default: --sigma).")
@click.option("--denoiser", "denoiser_spec", default=None,
              help="Denoiser of denoised_classifier and diffusion_calibration: a registered name (tiny_diffusion, "
                   "identity) or a JSON dict, e.g. '{\"name\": \"diffusion\", \"path\": \"unet_dir\"}'. A tuned or "
                   "random one is saved in --output-dir/denoiser, and certify finds it.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Loader batch (split into m mini-batches by SOME/SmoothMix); default 64 for digits, else 256.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True)
@click.option("--momentum", type=click.FloatRange(min=0), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
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
@_fail_cleanly
def train(method, model_name, dataset, data_root, sigma, sigmas, denoiser_spec, epochs, batch_size, optimizer, lr,
          momentum, weight_decay, lr_step, lr_gamma, num_heads, options, no_augment, seed, workers, device, output_dir,
          restart):
    """
    Train a base classifier for smoothing with a registered trainer, checkpointing every epoch (resumable).
    Under torchrun the run is data-parallel (DistributedDataParallel; rank 0 writes the files).
    """
    from art_some.plugins import registered
    from art_some.training import TrainConfig, is_checkpoint
    from art_some.training import train as run_training

    if method not in registered("trainers"):
        raise ValueError(f"--method {method!r} is not registered ({', '.join(sorted(registered('trainers')))})")
    if not is_checkpoint(model_name) and model_name not in registered("models"):
        raise ValueError(f"--model {model_name!r} is neither a checkpoint file nor a registered model "
                         f"({', '.join(sorted(registered('models')))})")
    config = TrainConfig(method=method, model=model_name, dataset=dataset, sigma=sigma, epochs=epochs,
                         batch_size=batch_size or TRAIN_BATCH_SIZES.get(dataset, 256), optimizer=optimizer, lr=lr,
                         momentum=momentum, weight_decay=weight_decay, lr_step=lr_step, lr_gamma=lr_gamma, seed=seed,
                         augment=not no_augment, model_kwargs={} if num_heads is None else {"num_heads": num_heads},
                         trainer_kwargs=_parse_options(options), denoiser=_parse_denoiser(denoiser_spec),
                         sigmas=None if sigmas is None else _parse_sigmas(sigmas))
    history = run_training(config, output_dir, device=_device(device), data_root=data_root, workers=workers,
                           restart=restart, echo=click.echo)
    if history is not None:
        click.echo(f"final loss {history[-1]:.4f}; checkpoint: {Path(output_dir) / 'model.safetensors'}")


def _parse_denoiser(text):
    """``--denoiser``: a registered name or a JSON dict with a ``name``; None when not given."""
    import json

    if text is None:
        return None
    if not text.lstrip().startswith("{"):
        return {"name": text}
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--denoiser is not valid JSON ({err}): give a registered name or a JSON dict") from None
    if not isinstance(spec.get("name"), str):
        raise ValueError(f"--denoiser needs a 'name' (a registered denoiser), got {text!r}")
    return spec


def _parse_sigmas(text: str) -> list[float]:
    try:
        sigmas = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sigmas must be comma-separated numbers, got {text!r}") from None
    if not sigmas or min(sigmas) <= 0:
        raise ValueError(f"--sigmas must hold positive numbers, got {text!r}")
    return sigmas


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
@_fail_cleanly
def demo(output_dir, sigma, epochs, n0, n, alpha, seed, max_inputs, retrain):
    """Train a small CNN on the embedded digits with Gaussian noise, certify the test split, plot and report."""
    import torch

    from art_some.core.results import summary_table
    from art_some.data import digits, digits_arrays
    from art_some.evaluation import certify_dataset, plot_certified_accuracy
    from art_some.models import DigitsCNN, load_checkpoint, save_checkpoint
    from art_some.trainers import GaussianAugmentationTrainer

    out = Path(output_dir)
    if retrain and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, records_path = out / "model.safetensors", out / "records.jsonl"
    test_data, info = digits(split="test")
    if checkpoint.exists():
        model, meta = load_checkpoint(checkpoint)
        if meta.get("sigma") != sigma:
            raise ValueError(
                f"--sigma {sigma} differs from the model in {out} (sigma {meta.get('sigma')}); use --retrain"
            )
        click.echo(f"Reusing {checkpoint} (pass --retrain to train again)")
        clf = build_estimator("smoothed", model, info, sigma=sigma, n0=n0, alpha=alpha, batch_size=1000, seed=seed,
                              device="cpu")
    else:
        torch.manual_seed(seed)
        model = DigitsCNN(num_classes=10)
        clf = build_estimator("smoothed", model, info, sigma=sigma, n0=n0, alpha=alpha, batch_size=1000, seed=seed,
                              device="cpu", optimizer=torch.optim.Adam(model.parameters(), lr=1e-3))
        x, y = digits_arrays("train")
        click.echo(f"Training DigitsCNN on {len(x)} digits with Gaussian noise (sigma={sigma}, {epochs} epochs)...")
        losses = GaussianAugmentationTrainer(clf, seed=seed).fit(x, y, batch_size=64, nb_epochs=epochs, verbose=True)
        click.echo(f"final training loss {losses[-1]:.3f}")
        save_checkpoint(checkpoint, model, "digits_cnn", {"num_classes": 10}, sigma=sigma, dataset="digits",
                        num_classes=10, input_shape=[1, 8, 8])
    indices = list(range(len(test_data)))[:max_inputs]
    click.echo(f"Certifying {len(indices)} test digits (n0={n0}, n={n}, alpha={alpha})...")
    records = certify_dataset(clf, test_data, indices, records_path, n=n, method="smoothed",
                              run_info=_run_info("digits", "test", checkpoint),
                              hint="use --retrain (or another --output-dir) to start over")
    plot = out / "certified_accuracy.png"
    plot_certified_accuracy({f"digits, sigma={sigma}": records}, plot, title="art-some demo")
    click.echo(summary_table(records, _parse_radii(DEFAULT_RADII)))
    click.echo(f"records: {records_path}, {records_path.with_suffix('.tsv')}; plot: {plot}; model: {checkpoint}")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--radii", default=DEFAULT_RADII, show_default=True, help="Comma-separated radii.")
@_fail_cleanly
def report(files, radii):
    """
    Print where the records come from (the JSONL header: versions, estimator, settings, weights hash, data), then
    certified accuracy at radii, ACR and abstention rate, for JSONL records or community TSV logs.
    """
    from art_some.core.results import comparison_table, describe_header, read_header, read_records, summary_table

    radii = _parse_radii(radii)
    loaded = []
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        records = read_records(path)
        loaded.append((Path(path).name, records))
        click.echo(f"== {path}")
        click.echo(describe_header(read_header(path)))
        click.echo(summary_table(records, radii))
    if len(loaded) > 1:  # e.g. art-some's records next to the authors' published log of the same model
        click.echo("== side by side")
        click.echo(comparison_table(loaded, radii))


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
    """Entry point of the ``art-some`` console script."""
    cli.main(args=argv, prog_name="art-some")


if __name__ == "__main__":
    main()
