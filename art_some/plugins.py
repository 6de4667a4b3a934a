"""
The plugin manager: built-ins are registered exactly like third-party plugins, then the ``art_some`` entry
points are loaded, then plugins that implement unknown (misspelt) hooks are dropped.

Access goes through :func:`registered`, which builds the registries lazily, once; :func:`meta` reads what a
registration declares (the keys of :data:`METADATA`, documented in :mod:`art_some.hookspecs`), and
:func:`add_commands` lets plugins add commands to a click group. Set ``ART_SOME_DISABLE_ENTRY_POINTS=1`` to load
built-ins only.

The built-ins are the modules of :mod:`art_some.builtins` (:data:`DEFAULT_PLUGINS`), one per kind; they import
what they register inside their hooks, so loading the plugin manager imports neither torch nor ART (a
third-party plugin may), and building a registry imports what it registers.

A broken plugin never breaks art-some: one that fails to import, implements an unknown hook or whose
registration hook raises is skipped with a warning naming it and its distribution (see :func:`skipped`).
A name registered twice in one kind keeps the first registration (built-ins first, then plugins in load
order) and warns naming both plugins.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import os
import warnings
import weakref
from dataclasses import dataclass, field

import pluggy

from art_some import hookspecs
from art_some._version import __version__

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "art_some"
DISABLE_ENV = "ART_SOME_DISABLE_ENTRY_POINTS"
KINDS = ("estimators", "trainers", "denoisers", "aggregations", "attacks", "models", "datasets", "noise_models",
         "certificates")
DEFAULT_PLUGINS = (
    "art_some.builtins.estimators",
    "art_some.builtins.aggregations",
    "art_some.builtins.trainers",
    "art_some.builtins.denoisers",
    "art_some.builtins.models",
    "art_some.builtins.datasets",
    "art_some.builtins.attacks",
    "art_some.builtins.noises",
    "art_some.builtins.certificates",
    "art_some.builtins.commands",
)
_OPTIONAL_NAME = (str, type(None))
# What a registration declares for the runs to read, per kind: key -> (default, allowed), ``allowed`` a list of
# choices or a type. register() refuses a value that is not allowed (so the plugin is skipped as broken);
# :func:`meta` fills the defaults. Every kind also takes a ``description`` (default ""), and any other key is kept
# as given. The keys are documented in the hooks' docstrings (art_some.hookspecs).
METADATA = {
    "estimators": {"fits": ("any", ["any", "multihead"]), "denoiser": (False, bool)},
    "trainers": {"tunes": ("classifier", ["classifier", "denoiser"]), "estimator": (None, _OPTIONAL_NAME),
                 "cross_entropy": (False, bool), "distributed": (True, bool), "train_defaults": ({}, dict)},
    "denoisers": {},
    "aggregations": {},
    "attacks": {"bounded": (False, bool), "norms": (("l2",), tuple)},
    "models": {"estimator": (None, _OPTIONAL_NAME)},
    "datasets": {},
    "noise_models": {},
    "certificates": {},
}
# The estimators a run falls back on for a model that declares no ``estimator`` (see default_estimator).
DEFAULT_ESTIMATOR = "smoothed"
MULTIHEAD_ESTIMATOR = "some"


@dataclass
class Entry:
    """One registered thing: its name, the object, the plugin and distribution that provided it, and metadata."""

    name: str
    obj: object
    plugin: str
    distribution: str
    meta: dict = field(default_factory=dict)


_pm: pluggy.PluginManager | None = None
_distributions: dict[str, str] = {}
_registries: dict[str, dict[str, Entry]] = {}
_skipped: dict[str, str] = {}
# Commands each plugin added to a click group, (group, name, command), so that skipping the plugin removes them.
_commands: dict[str, list[tuple[object, str, object]]] = {}
_groups_done: weakref.WeakSet = weakref.WeakSet()  # the groups add_commands has been called on


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("art_some")
        pm.add_hookspecs(hookspecs)
        for module_name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(module_name), name=module_name)
            _distributions[module_name] = f"art-some {__version__}"
        if os.environ.get(DISABLE_ENV, "") not in ("1", "true", "yes"):
            _load_entry_points(pm)
        _drop_unknown_hooks(pm)
        pm.check_pending()  # a guard only: every plugin left implements known hooks
        _pm = pm
    return _pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register each ``art_some`` entry point; a plugin that fails to import is skipped with a warning."""
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            dist_name = dist.metadata["Name"]
            if ep.name in _skipped:
                continue  # already warned about
            if pm.has_plugin(ep.name):
                # The same distribution can be found twice on sys.path; only another one is a clash.
                taken_by = _distributions.get(ep.name, "?")
                if taken_by.split(" ")[0] != dist_name:
                    warnings.warn(f"art-some plugin {ep.name!r} from {dist_name} is skipped: the plugin name is "
                                  f"already taken by {taken_by}")
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as err:  # a broken third-party plugin must not break art-some
                _skipped[ep.name] = f"failed to load: {err}"
                warnings.warn(f"art-some plugin {ep.name!r} from {dist_name} failed to load: {err}")
                continue
            _distributions[ep.name] = f"{dist_name} {dist.version}"


def _skip(pm: pluggy.PluginManager, plugin: str, reason: str) -> None:
    """Unregister a broken plugin, remember why, and warn naming it and its distribution."""
    _skipped[plugin] = reason
    if pm.has_plugin(plugin):
        pm.unregister(name=plugin)
    _remove_commands(plugin)
    warnings.warn(f"art-some plugin {plugin!r} from {_distributions.get(plugin, 'an unknown distribution')} "
                  f"is skipped: {reason}")


def _drop_unknown_hooks(pm: pluggy.PluginManager) -> None:
    """Skip each plugin that implements a hook with no specification (what ``check_pending`` would raise on)."""
    known = [name for name in dir(hookspecs) if name.startswith("register_")]
    for hook_name in list(vars(pm.hook)):
        if hook_name.startswith("_"):
            continue
        caller = getattr(pm.hook, hook_name)
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook or not pm.has_plugin(impl.plugin_name):
                continue
            close = difflib.get_close_matches(hook_name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the hooks are {', '.join(known)}"
            _skip(pm, impl.plugin_name, f"it implements {hook_name!r}, which is not an art-some hook{hint}")


def skipped() -> dict[str, str]:
    """The plugins skipped so far as broken, from plugin name to the reason (after a first :func:`registered`)."""
    return dict(_skipped)


def reset() -> None:
    """Forget the plugin manager and registries (tests; after installing a plugin at run time)."""
    global _pm
    _pm = None
    for plugin in list(_commands):
        _remove_commands(plugin)
    _groups_done.clear()
    _distributions.clear()
    _registries.clear()
    _skipped.clear()


def _call_hook(impl, kind: str) -> list[tuple[str, object, dict]]:
    """Run one plugin's ``register_<kind>`` and return what it registered, as ``(name, obj, meta)``."""
    found = []

    def register(name: str, obj: object, **meta) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"register() needs a non-empty name for each {kind[:-1]}, got {name!r}")
        _check_meta(kind, name, meta)
        found.append((name, obj, meta))

    impl.function(**({"register": register} if "register" in impl.argnames else {}))
    return found


def _check_meta(kind: str, name: str, meta: dict) -> None:
    """Refuse a documented metadata key whose value is not allowed, naming the thing, the key and the choices."""
    for key, (_, allowed) in METADATA[kind].items():
        if key not in meta:
            continue
        value = meta[key]
        if isinstance(allowed, list):
            if value not in allowed:
                raise ValueError(f"{kind[:-1]} {name!r} declares {key}={value!r}; choose one of "
                                 f"{', '.join(map(repr, allowed))}")
        elif not isinstance(value, allowed):
            expected = " or ".join("None" if t is type(None) else t.__name__
                                   for t in (allowed if isinstance(allowed, tuple) else (allowed,)))
            raise ValueError(f"{kind[:-1]} {name!r} declares {key}={value!r}; it must be {expected}")


def _sorted_impls(pm: pluggy.PluginManager, hook_name: str) -> list:
    """The implementations of ``hook_name`` that register something, built-ins first, then plugins in load order."""
    order = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}

    def load_order(impl) -> tuple[bool, int]:
        return impl.plugin_name not in DEFAULT_PLUGINS, order.get(impl.plugin_name, len(order))

    impls = [impl for impl in getattr(pm.hook, hook_name).get_hookimpls()
             if not (impl.hookwrapper or impl.wrapper)]  # wrappers decorate calls; they register nothing
    return sorted(impls, key=load_order)


def _build_all() -> None:
    """
    Build every registry at once, so that a plugin whose hook raises for one kind is dropped from all kinds
    (half a plugin is worse than none) and the result does not depend on which kind is asked for first.
    """
    pm = get_plugin_manager()
    _drop_unknown_hooks(pm)  # plugins registered on the manager after it was loaded
    found: dict[str, list[tuple[str, list]]] = {}
    failed: dict[str, str] = {}
    for kind in KINDS:
        found[kind] = []
        for impl in _sorted_impls(pm, f"register_{kind}"):
            if impl.plugin_name in failed:
                continue
            try:
                found[kind].append((impl.plugin_name, _call_hook(impl, kind)))
            except Exception as err:  # a broken plugin must not break art-some
                failed[impl.plugin_name] = f"its register_{kind} hook raised {type(err).__name__}: {err}"
    for plugin, reason in failed.items():
        _skip(pm, plugin, reason)
    for kind in KINDS:
        registry: dict[str, Entry] = {}
        for plugin, items in found[kind]:
            if plugin in failed:
                continue
            for name, obj, meta in items:
                if name in registry:
                    _warn_clash(kind, name, registry[name].plugin, plugin)
                    continue
                registry[name] = Entry(name, obj, plugin, _distributions.get(plugin, "?"), meta)
        _registries[kind] = registry


def _warn_clash(kind: str, name: str, kept: str, dropped: str) -> None:
    def who(plugin: str) -> str:
        return f"{plugin!r} ({_distributions.get(plugin, 'unknown distribution')})"

    if kept == dropped:
        warnings.warn(f"{kind[:-1]} name {name!r} is registered twice by plugin {who(kept)}; keeping the first")
    else:
        warnings.warn(f"{kind[:-1]} name {name!r} is registered by both {who(kept)} and {who(dropped)}; "
                      f"keeping the one from {kept!r}")


def entries(kind: str) -> dict[str, Entry]:
    """The registry of ``kind`` with full entries (object, plugin, distribution, metadata)."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind not in _registries:
        _build_all()
    return _registries[kind]


def registered(kind: str) -> dict[str, object]:
    """
    Everything registered under ``kind``: a dict from name to object.

    :param kind: One of ``estimators``, ``trainers``, ``denoisers``, ``aggregations``, ``attacks``, ``models``,
                 ``datasets``.
    """
    return {name: entry.obj for name, entry in entries(kind).items()}


def get(kind: str, name: str):
    """The object registered as ``name`` under ``kind``, with an error listing the known names."""
    registry = registered(kind)
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        raise ValueError(f"unknown {kind[:-1]} {name!r}; registered: {known}")
    return registry[name]


def meta(kind: str, name: str) -> dict:
    """
    What the registration of ``name`` under ``kind`` declares: its metadata with the defaults of
    :data:`METADATA` (and ``description``) filled in, e.g. ``meta("trainers", "diffusion_calibration")["tunes"]``
    is ``"denoiser"``.

    :raises ValueError: for an unknown kind or name, listing the registered names.
    """
    found = entries(kind)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ValueError(f"unknown {kind[:-1]} {name!r}; registered: {known}")
    defaults = {"description": "", **{key: default for key, (default, _) in METADATA[kind].items()}}
    return {**defaults, **found[name].meta}


def default_estimator(model_name: str | None = None, model=None) -> str:
    """
    The estimator a run wraps a model in when none is asked for: the ``estimator`` its registration declares
    (``model_name``, a registered model), else :data:`MULTIHEAD_ESTIMATOR` for a multi-head network (``model``
    has ``head_logits``), else :data:`DEFAULT_ESTIMATOR`.
    """
    if model_name is not None and model_name in entries("models"):
        declared = meta("models", model_name)["estimator"]
        if declared:
            return declared
    return MULTIHEAD_ESTIMATOR if callable(getattr(model, "head_logits", None)) else DEFAULT_ESTIMATOR


def add_commands(group) -> None:
    """
    Let every plugin add commands to the click group ``group`` through its ``register_commands(cli)`` hook
    (built-ins first, then plugins in load order); once per group, so calling it again changes nothing.

    A command named like one the group has already is dropped with a warning, the first one kept. A plugin whose
    hook raises is skipped with a warning (the commands it added are removed, and so are its registrations); so
    are the commands of a plugin skipped later, when a registry is built.
    """
    if group in _groups_done:
        return
    _groups_done.add(group)
    pm = get_plugin_manager()
    _drop_unknown_hooks(pm)
    for impl in _sorted_impls(pm, "register_commands"):
        plugin = impl.plugin_name
        if not pm.has_plugin(plugin):
            continue  # skipped as broken meanwhile
        before = dict(group.commands)
        try:
            impl.function(**({"cli": group} if "cli" in impl.argnames else {}))
        except Exception as err:  # a broken plugin must not break art-some
            group.commands.clear()
            group.commands.update(before)
            _skip(pm, plugin, f"its register_commands hook raised {type(err).__name__}: {err}")
            _registries.clear()  # built again without it: half a plugin is worse than none
            continue
        for name, command in list(group.commands.items()):
            if command is before.get(name):
                continue
            if name in before:
                group.commands[name] = before[name]
                warnings.warn(f"command {name!r} from art-some plugin {plugin!r} "
                              f"({_distributions.get(plugin, 'unknown distribution')}) is skipped: the name is "
                              f"already taken")
            else:
                _commands.setdefault(plugin, []).append((group, name, command))


def commands() -> dict[str, str]:
    """The commands plugins added (through :func:`add_commands`), from command name to plugin and distribution."""
    return {name: f"{plugin} ({_distributions.get(plugin, '?')})"
            for plugin, added in _commands.items() for _, name, _ in added}


def _remove_commands(plugin: str) -> None:
    """Take the commands ``plugin`` added off their groups (the plugin is skipped, or everything is reset)."""
    for group, name, command in _commands.pop(plugin, []):
        if group.commands.get(name) is command:
            del group.commands[name]
