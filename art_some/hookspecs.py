"""
The extension points of art-some (pluggy project ``art_some``).

Each hook is called with a ``register(name, obj, **meta)`` callback; a plugin calls it once per thing it adds.
Built-ins use these same hooks. Third-party packages expose a module with ``@hookimpl`` functions under the
``art_some`` entry-point group.

A plugin is all or nothing: if one of its hooks raises, or it implements a hook not defined here (a misspelt
name), art-some skips the whole plugin with a warning and carries on. Names are unique within a kind: a name
taken already (by a built-in, or by a plugin loaded earlier) is skipped with a warning naming both plugins.
"""
import pluggy

hookspec = pluggy.HookspecMarker("art_some")
hookimpl = pluggy.HookimplMarker("art_some")


@hookspec
def register_estimators(register):
    """Register estimator classes (subclasses of ART's BaseEstimator, ClassifierMixin and LossGradientsMixin)."""


@hookspec
def register_trainers(register):
    """Register trainer classes (subclasses of ``art.defences.trainer.Trainer``)."""


@hookspec
def register_denoisers(register):
    """Register denoiser factories ``factory(**config) -> torch.nn.Module`` (no weight loading at registration)."""


@hookspec
def register_aggregations(register):
    """Register vote-aggregation rules for heads or patches; say in ``description`` whether they stay sound."""


@hookspec
def register_attacks(register):
    """
    Register attack recipes ``recipe(estimator, eps=None, **budget) -> art.attacks.EvasionAttack`` for the audit;
    ``register(name, recipe, bounded=True)`` marks a recipe that searches an L2 ball of radius ``eps`` (the audit
    runs it on a grid of budgets), ``bounded=False`` one that returns its own minimal perturbation.
    """


@hookspec
def register_models(register):
    """Register model constructors ``constructor(num_classes=..., **kwargs) -> torch.nn.Module``."""


@hookspec
def register_datasets(register):
    """Register dataset loaders ``loader(root=None, split="test") -> (torch Dataset, info dict)``."""
