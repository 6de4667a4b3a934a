"""
The extension points of art-some (pluggy project ``art_some``).

Each ``register_<kind>`` hook is called with a ``register(name, obj, **meta)`` callback; a plugin calls it once per
thing it adds. Built-ins use these same hooks (the modules of :mod:`art_some.builtins`). Third-party packages expose
a module with ``@hookimpl`` functions under the ``art_some`` entry-point group.

``meta`` says what the thing is, for the runs to read (:func:`art_some.plugins.meta` fills the defaults): every kind
takes ``description`` (one line for ``art-some plugins``), and the keys each hook documents below. A documented key
with a value of the wrong type or outside its choices makes ``register`` raise, so the plugin is skipped as broken.
Other keys are kept as given.

``register_commands(cli)`` is different: it is given the ``art-some`` click group and adds commands to it.

A plugin is all or nothing: if one of its hooks raises, or it implements a hook not defined here (a misspelt
name), art-some skips the whole plugin with a warning and carries on. Names are unique within a kind: a name
taken already (by a built-in, or by a plugin loaded earlier) is skipped with a warning naming both plugins.
"""
import pluggy

hookspec = pluggy.HookspecMarker("art_some")
hookimpl = pluggy.HookimplMarker("art_some")


@hookspec
def register_estimators(register):
    """
    Register estimator classes (subclasses of ART's BaseEstimator, ClassifierMixin and LossGradientsMixin).

    Metadata: ``fits`` (``"any"``, the default, or ``"multihead"``: only models with ``head_logits(x)``, as
    ``some``); ``denoiser`` (bool, default False: True when the estimator takes a denoiser and noise levels, the
    options ``denoiser`` and ``sigmas``, as ``denoised_multiscale``).
    """


@hookspec
def register_trainers(register):
    """
    Register trainer classes (subclasses of ``art.defences.trainer.Trainer``).

    Metadata, what ``art-some train`` reads about the trainer:

    - ``tunes``: what its optimizer steps, ``"classifier"`` (the default) or ``"denoiser"`` (the classifier is
      frozen; the run saves the tuned denoiser);
    - ``estimator``: the registered estimator it trains through (default None: the model's default estimator,
      see ``register_models``); an estimator declaring ``denoiser=True`` makes the trainer a denoised method,
      which takes ``--denoiser`` and ``--sigmas``;
    - ``cross_entropy`` (bool, default False): its loss is a cross-entropy, so ln(classes) is its chance level
      (the near-chance warning, which every trainer gets from its held-out accuracy, then names the loss too);
    - ``distributed`` (bool, default True): it runs under torchrun (DistributedDataParallel); False refuses it;
    - ``train_defaults`` (dict, default {}): the ``optimizer``, ``lr``, ``momentum``, ``weight_decay`` and
      ``batch_size`` that ``art-some train`` uses for it unless the user gives them (the others:
      :data:`art_some.runs.train.TRAIN_DEFAULTS` and the data set's batch size).
    """


@hookspec
def register_denoisers(register):
    """Register denoiser factories ``factory(**config) -> torch.nn.Module`` (no weight loading at registration)."""


@hookspec
def register_aggregations(register):
    """Register vote-aggregation rules for heads or patches; say in ``description`` whether they stay sound."""


@hookspec
def register_attacks(register):
    """
    Register attack recipes ``recipe(estimator, eps=None, norm="l2", **budget) -> art.attacks.EvasionAttack`` for
    the audit; ``register(name, recipe, bounded=True)`` marks a recipe that searches a ball of radius ``eps`` (the
    audit runs it on a grid of budgets), ``bounded=False`` (the default) one that returns its own minimal
    perturbation. ``norms`` (default ``("l2",)``) are the norms it attacks in (``"l1"``, ``"l2"``, ``"linf"``): the
    audit runs a recipe only in the norm of the certificates it checks, and passes that norm as ``norm``.
    """


@hookspec
def register_models(register):
    """
    Register model constructors ``constructor(num_classes=..., **kwargs) -> torch.nn.Module``.

    Metadata: ``estimator``, the registered estimator a run wraps the model in when none is asked for (default
    None: ``some`` for a multi-head network, one with ``head_logits(x)``, else ``smoothed``; see
    :func:`art_some.plugins.default_estimator`).
    """


@hookspec
def register_datasets(register):
    """Register dataset loaders ``loader(root=None, split="test") -> (torch Dataset, info dict)``."""


@hookspec
def register_noise_models(register):
    """
    Register noise models: classes with ``name``, ``norms`` (the norms their radii can be in, the first the default)
    and the constructor ``cls(sigma, norm=None, dimension=None)``, subclasses of
    :class:`art_some.core.noise.NoiseModel` (unit-variance ``unit`` draws from a generator, ``perturb``, ``radius``).
    Estimators, trainers and ``--noise`` find them by name.
    """


@hookspec
def register_certificates(register):
    """
    Register certificate rules: subclasses of :class:`art_some.core.rules.CertificateRule` (a ``lower_bound``, and
    ``radius`` where the noise's is not theirs; ``noises`` / ``norms`` where the certificate holds for some only).
    """


@hookspec
def register_commands(cli):
    """
    Add commands to the ``art-some`` click group ``cli`` (as Simon Willison's llm): ``@cli.command()`` on a
    function, or ``cli.add_command(command)``. A command named like one already there (a built-in's, or one added
    by a plugin loaded earlier) is dropped with a warning; a plugin whose hook raises is skipped with a warning.
    """
