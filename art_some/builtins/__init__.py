"""
art-some's own registrations, one plugin module per kind (as llm's ``default_plugins``).

Each module holds the ``@hookimpl register_<kind>`` of one kind and is registered on the plugin manager exactly
like a third-party plugin (:data:`art_some.plugins.DEFAULT_PLUGINS`), before the entry points. The modules import
nothing heavy at module level: torch, ART and the classes they register are imported inside the hooks, so that
loading the plugin manager (for instance to add plugin commands to the ``art-some`` group) stays cheap, and only
building a registry imports what it registers.

The metadata each registration declares (``tunes``, ``estimator``, ``fits``, ...) is what the runs read, through
:func:`art_some.plugins.meta`; the keys are documented in :mod:`art_some.hookspecs`.
"""
