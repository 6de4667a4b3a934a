"""
Config files for every command, and the option values that commands read from text.

``art-some certify --config run.yaml`` reads a YAML (or JSON) mapping whose keys are the command's options, with
dashes or underscores (``batch-size`` or ``batch_size``); options given on the command line override the file; a
key that is not an option of the command is refused, naming it and the command's keys. A run started from a file
writes its resolved configuration (the file's values, then the command line's) beside its records, a file that
``--config`` takes back. The values may be written as on the command line, or as YAML lists and mappings: a list
for a comma-separated option (``radii: [0.25, 0.5]``) or a repeatable one, a mapping for ``option``
(``option: {sigma_rule: knn}``), ``budget`` (``budget: {pgd: {max_iter: 50}}``) and ``denoiser``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import click

CONFIG_KEY = "art_some_config"  # ctx.meta: the file a command's options were read from
NESTED = {"--budget"}  # repeatable attack.name=value options: a mapping of mappings in a file


# ----------------------------------------------------------------------------------------------------------------
# Config files
# ----------------------------------------------------------------------------------------------------------------
def config_option(command):
    """Add ``--config FILE`` to a click command: the file's values become the defaults of its options."""
    return click.option(
        "--config", type=click.Path(exists=True, dir_okay=False), is_eager=True, expose_value=False,
        callback=_load_config,
        help="A YAML or JSON file of this command's options (keys as the options' names, with dashes or "
             "underscores); options given here override it. The resolved configuration is written beside the "
             "records.")(command)


def _load_config(ctx: click.Context, param: click.Parameter, value):
    if value is None:
        return
    try:
        values = read_config(value)
        ctx.default_map = {**(ctx.default_map or {}), **option_values(ctx.command, values, value)}
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None
    ctx.meta[CONFIG_KEY] = value


def read_config(path) -> dict:
    """The mapping in a YAML or JSON file (an empty file is an empty mapping)."""
    import yaml

    text = Path(path).read_text()
    try:
        values = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path} is not valid {'JSON' if Path(path).suffix == '.json' else 'YAML'}: "
                         f"{' '.join(str(err).split())}") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values, got {type(values).__name__}")
    return values


def option_keys(command: click.Command) -> dict[str, click.Option]:
    """The keys a config file of ``command`` may hold (each option's name, underscored), and their options."""
    keys = {}
    for param in command.params:
        names = [o for o in param.opts if o.startswith("--")] if isinstance(param, click.Option) else []
        if param.name in ("help", "version") or not names or names[0] == "--config":
            continue
        keys[names[0][2:].replace("-", "_")] = param
    return keys


def option_values(command: click.Command, values: dict, path="the config file") -> dict:
    """
    ``values`` of a config file as click's defaults (``ctx.default_map``: parameter name -> value).

    :raises ValueError: naming the first key that is not an option of ``command``, and the keys it takes.
    """
    keys = option_keys(command)
    # A parameter's own name is accepted too (options, attacks, budgets: the config dataclasses' field names).
    aliases = {**{p.name: p for p in keys.values()}, **keys}
    defaults = {}
    for key, value in values.items():
        param = aliases.get(str(key).replace("-", "_"))
        if param is None:
            raise ValueError(f"unknown key {key!r} in {path}: art-some {command.name} takes "
                             f"{', '.join(sorted(keys))}")
        if param.name in defaults:
            raise ValueError(f"{path} gives option {key!r} twice (as {param.opts[0][2:]} and {param.name})")
        defaults[param.name] = _as_option(param, value)
    return defaults


def _as_option(param: click.Option, value):
    """A YAML value as the option's command-line text (lists joined by commas, mappings as name=value pairs)."""
    if param.multiple:
        if isinstance(value, dict):
            if NESTED & set(param.opts):
                return [f"{outer}.{k}={json.dumps(v)}" for outer, inner in value.items() for k, v in
                        (inner or {}).items()]
            return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items()]
        return [value] if isinstance(value, str) else list(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def write_resolved(ctx: click.Context, path) -> Path | None:
    """
    Write the resolved configuration of a command started with ``--config`` (every option's value, the file's or
    the command line's) to ``path``, as YAML that ``--config`` reads back; nothing without ``--config``.

    :return: The file written, or None.
    """
    import yaml

    from art_some._version import __version__
    from art_some.runs.records import write_atomically

    source = ctx.meta.get(CONFIG_KEY)
    if source is None:
        return None
    resolved = {key: list(ctx.params[p.name]) if isinstance(ctx.params[p.name], tuple) else ctx.params[p.name]
                for key, p in option_keys(ctx.command).items() if p.name in ctx.params}
    given = sorted(key for key, p in option_keys(ctx.command).items()
                   if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE)
    head = (f"# art-some {ctx.command.name} (art-some {__version__}): {source}"
            + (f", with {', '.join(given)} from the command line" if given else "") + "\n")
    write_atomically(path, head + yaml.safe_dump(resolved, sort_keys=False))
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# Option values from text
# ----------------------------------------------------------------------------------------------------------------
def parse_radii(text: str, option: str = "--radii") -> list[float]:
    """Comma-separated finite non-negative numbers."""
    try:
        radii = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not radii or min(radii) < 0 or not all(math.isfinite(r) for r in radii):
        raise ValueError(f"{option} must hold finite non-negative numbers, got {text!r}")
    return radii


def parse_sigmas(text: str) -> list[float]:
    """``--sigmas``: comma-separated positive numbers."""
    try:
        sigmas = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sigmas must be comma-separated numbers, got {text!r}") from None
    if not sigmas or min(sigmas) <= 0:
        raise ValueError(f"--sigmas must hold positive numbers, got {text!r}")
    return sigmas


def parse_options(options, flag: str = "--option") -> dict:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, true/false, null), else strings."""
    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} must look like name=value, got {option!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def parse_budgets(options) -> dict:
    """``--budget attack.name=value`` pairs as ``{attack: {name: value}}``."""
    budgets = {}
    for name, value in parse_options([o.replace(".", "__", 1) for o in options]).items():
        attack, _, key = name.partition("__")
        if not key:
            raise ValueError(f"--budget must look like attack.name=value, got {name!r}")
        budgets.setdefault(attack, {})[key] = value
    return budgets


def parse_denoiser(text):
    """``--denoiser``: a registered name or a JSON dict with a ``name``; None when not given."""
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
