"""
The plugin manager: built-ins are registered exactly like third-party plugins, then the ``art_some`` entry
points are loaded, then plugins that implement unknown (misspelt) hooks are dropped.

Access goes through :func:`registered`, which builds the registries lazily, once. Set
``ART_SOME_DISABLE_ENTRY_POINTS=1`` to load built-ins only.

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
from dataclasses import dataclass, field

import pluggy

from art_some import hookspecs

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "art_some"
DISABLE_ENV = "ART_SOME_DISABLE_ENTRY_POINTS"
KINDS = ("estimators", "trainers", "denoisers", "aggregations", "attacks", "models", "datasets")
DEFAULT_PLUGINS = (
    "art_some.estimators",
    "art_some.aggregations",
    "art_some.trainers",
    "art_some.models",
    "art_some.data",
    "art_some.evaluation.attacks",
)


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


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("art_some")
        pm.add_hookspecs(hookspecs)
        from art_some import __version__

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
    _distributions.clear()
    _registries.clear()
    _skipped.clear()


def _call_hook(impl, kind: str) -> list[tuple[str, object, dict]]:
    """Run one plugin's ``register_<kind>`` and return what it registered, as ``(name, obj, meta)``."""
    found = []

    def register(name: str, obj: object, **meta) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"register() needs a non-empty name for each {kind[:-1]}, got {name!r}")
        found.append((name, obj, meta))

    impl.function(**({"register": register} if "register" in impl.argnames else {}))
    return found


def _build_all() -> None:
    """
    Build every registry at once, so that a plugin whose hook raises for one kind is dropped from all kinds
    (half a plugin is worse than none) and the result does not depend on which kind is asked for first.
    """
    pm = get_plugin_manager()
    _drop_unknown_hooks(pm)  # plugins registered on the manager after it was loaded
    order = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}

    def load_order(impl) -> tuple[bool, int]:
        return impl.plugin_name not in DEFAULT_PLUGINS, order.get(impl.plugin_name, len(order))

    found: dict[str, list[tuple[str, list]]] = {}
    failed: dict[str, str] = {}
    for kind in KINDS:
        found[kind] = []
        impls = [impl for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls()
                 if not (impl.hookwrapper or impl.wrapper)]  # wrappers decorate calls; they register nothing
        for impl in sorted(impls, key=load_order):
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
