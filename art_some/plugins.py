"""
The plugin manager: built-ins are registered exactly like third-party plugins, then the ``art_some`` entry
points are loaded, then ``check_pending()`` catches misspelt hook names.

Access goes through :func:`registered`, which builds each registry lazily, once. Set
``ART_SOME_DISABLE_ENTRY_POINTS=1`` to load built-ins only.
"""
from __future__ import annotations

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
        pm.check_pending()
        _pm = pm
    return _pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register each ``art_some`` entry point; a plugin that fails to import is skipped with a warning."""
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or pm.has_plugin(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as err:  # a broken third-party plugin must not break art-some
                warnings.warn(f"art-some plugin {ep.name!r} from {dist.metadata['Name']} failed to load: {err}")
                continue
            _distributions[ep.name] = f"{dist.metadata['Name']} {dist.version}"


def reset() -> None:
    """Forget the plugin manager and registries (tests; after installing a plugin at run time)."""
    global _pm
    _pm = None
    _distributions.clear()
    _registries.clear()


def _build(kind: str) -> dict[str, Entry]:
    pm = get_plugin_manager()
    hook = getattr(pm.hook, f"register_{kind}")
    registry: dict[str, Entry] = {}
    # Call each implementation on its own so every name is attributed to the plugin that registered it.
    for impl in hook.get_hookimpls():
        if impl.hookwrapper or impl.wrapper:
            continue  # wrappers decorate calls; they register nothing themselves

        def register(name: str, obj: object, _plugin: str = impl.plugin_name, **meta) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"plugin {_plugin!r} registered a {kind[:-1]} without a name")
            if name in registry:
                raise ValueError(
                    f"{kind[:-1]} name {name!r} is registered twice: by {registry[name].plugin!r} "
                    f"and by {_plugin!r}"
                )
            registry[name] = Entry(name, obj, _plugin, _distributions.get(_plugin, "?"), meta)

        impl.function(**({"register": register} if "register" in impl.argnames else {}))
    return registry


def entries(kind: str) -> dict[str, Entry]:
    """The registry of ``kind`` with full entries (object, plugin, distribution, metadata)."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind not in _registries:
        _registries[kind] = _build(kind)
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
