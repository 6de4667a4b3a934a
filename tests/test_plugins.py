import os
import shutil
import sys

import numpy as np
import pluggy
import pytest
import torch
from click.testing import CliRunner

from art_some import hookimpl, plugins
from art_some.cli import cli

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "art_some_example_plugin")


@pytest.fixture(autouse=True)
def fresh_plugins():
    plugins.reset()
    yield
    plugins.reset()


def fake_distribution(folder, dist, version, entry_name, module):
    """Make ``module`` (already in ``folder``) discoverable as entry point ``entry_name`` of distribution ``dist``."""
    info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[art_some]\n{entry_name} = {module}\n")


@pytest.fixture
def example_installed(tmp_path, monkeypatch):
    """The example package made discoverable through a real entry point: a dist-info folder on sys.path."""
    shutil.copytree(os.path.join(EXAMPLE, "art_some_example_plugin"), tmp_path / "art_some_example_plugin")
    fake_distribution(tmp_path, "art-some-example-plugin", "0.1.0", "example", "art_some_example_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("art_some_example_plugin", None)


def test_builtins_are_registered():
    assert "smoothed" in plugins.registered("estimators")
    assert {"gaussian", "consistency"} <= set(plugins.registered("trainers"))
    assert {"digits_cnn", "cifar_resnet110", "resnet50"} <= set(plugins.registered("models"))
    assert {"digits", "cifar10", "imagenet", "imagefolder"} <= set(plugins.registered("datasets"))
    assert plugins.entries("estimators")["smoothed"].distribution.startswith("art-some ")
    for kind in plugins.KINDS:
        assert isinstance(plugins.registered(kind), dict)


def test_unknown_kind_and_name():
    with pytest.raises(ValueError, match="unknown plugin kind"):
        plugins.registered("widgets")
    with pytest.raises(ValueError, match="registered: .*smoothed"):
        plugins.get("estimators", "nope")


def test_loading_is_lazy_and_idempotent():
    pm = plugins.get_plugin_manager()
    assert plugins.get_plugin_manager() is pm
    assert plugins.registered("models") == plugins.registered("models")


def test_name_clash_keeps_the_builtin_and_warns_naming_both_plugins():
    # A clash used to be an error that made every command exit 2; now the built-in wins and the clash is a warning.
    from art_some import SmoothedClassifier

    class Clash:
        @hookimpl
        def register_estimators(self, register):
            register("smoothed", object)
            register("clash_only", object)

    pm = plugins.get_plugin_manager()
    pm.register(Clash(), name="clashing-plugin")
    try:
        with pytest.warns(UserWarning, match="'smoothed'.*art_some.builtins.estimators.*clashing-plugin"):
            found = plugins.entries("estimators")
        assert found["smoothed"].obj is SmoothedClassifier
        assert found["smoothed"].plugin == "art_some.builtins.estimators"
        assert found["clash_only"].plugin == "clashing-plugin"  # only the clashing entry is skipped
    finally:
        pm.unregister(name="clashing-plugin")


def test_misspelt_hook_is_caught():
    class Typo:
        @hookimpl
        def register_estimater(self, register):
            pass

    pm = plugins.get_plugin_manager()
    pm.register(Typo(), name="typo")
    try:
        with pytest.raises(pluggy.PluginValidationError):
            pm.check_pending()
    finally:
        pm.unregister(name="typo")


def test_example_plugin_arrives_through_its_entry_point(example_installed, digits):
    entry = plugins.entries("estimators")["flip_smoothed"]
    assert entry.plugin == "example" and entry.distribution == "art-some-example-plugin 0.1.0"
    # Usable by name: build its model and estimator from the registry and certify.
    model = plugins.get("models", "example_mlp")(num_classes=10)
    cls = plugins.get("estimators", "flip_smoothed")
    clf = cls(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu", scale=0.25)
    _, (x, _) = digits
    pred, radius = clf.certify(x[:3], n=50)
    assert pred.shape == (3,) and radius.shape == (3,)
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0 and "flip_smoothed" in result.output and "art-some-example-plugin" in result.output
    # Its patch aggregation is usable by name in the built-in SmoothReduceClassifier.
    assert plugins.entries("aggregations")["median"].plugin == "example"
    from art_some import SmoothReduceClassifier

    patched = SmoothReduceClassifier(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu", scale=0.25,
                                     resize=10, aggregation="median", patches={"layout": "corners", "size": 8})
    pred, _ = patched.certify(x[:3], n=50)
    assert pred.shape == (3,) and patched.certificate_info()["aggregation"] == "median"


def test_the_example_plugins_noise_model_certifies_in_its_own_norm(example_installed, digits):
    from art_some.core.noise import UniformNoise

    entry = plugins.entries("noise_models")["uniform_linf"]
    assert entry.plugin == "example"
    model = plugins.get("models", "example_mlp")(num_classes=10)
    clf = plugins.get("estimators", "smoothed")(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu",
                                                scale=0.25, noise="uniform_linf")
    assert clf.radius_norm == "linf"
    _, (x, _) = digits
    result = clf.certify_detailed(x[:3], n=200)
    assert result.extra["noise"] == "uniform_linf" and result.extra["norm"] == "linf"
    # In one dimension its L-infinity radius is uniform noise's L1 radius; in 64 it is far smaller.
    p = np.array([0.6, 0.9])
    np.testing.assert_allclose(entry.obj(0.25, dimension=1).radius(p), UniformNoise(0.25).radius(p))
    assert (entry.obj(0.25, dimension=64).radius(p) < UniformNoise(0.25).radius(p) / 30).all()
    listed = CliRunner().invoke(cli, ["plugins"])
    assert "uniform_linf" in listed.output and "noise_models" in listed.output


def test_entry_points_can_be_disabled(example_installed, monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_ENV, "1")
    assert "flip_smoothed" not in plugins.registered("estimators")
    assert "smoothed" in plugins.registered("estimators")


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('boom')\n")
    fake_distribution(tmp_path, "broken-plugin", "1.0", "broken", "broken_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="broken"):
        assert "smoothed" in plugins.registered("estimators")


def test_each_kind_has_a_registration_hook():
    from art_some import hookspecs

    names = [n for n in dir(hookspecs) if n.startswith("register_") and n != "register_commands"]
    assert sorted(n[len("register_"):] for n in names) == sorted(plugins.KINDS)


def test_importing_the_package_and_hookspecs_does_not_import_art():
    import subprocess
    import sys

    code = "import sys, art_some, art_some.hookspecs; sys.exit(1 if 'art' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_hookimpls_without_arguments_and_wrappers_are_handled():
    class NoArgs:
        @hookimpl
        def register_attacks(self):
            pass

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_attacks(self, register):
            return (yield)

    pm = plugins.get_plugin_manager()
    builtin = dict(plugins.registered("attacks"))
    plugins._registries.clear()
    pm.register(NoArgs(), name="no-args")
    pm.register(Wrapper(), name="wrapper")
    try:
        assert plugins.registered("attacks") == builtin  # neither adds anything, neither breaks the registry
    finally:
        pm.unregister(name="no-args")
        pm.unregister(name="wrapper")
        plugins._registries.clear()


def test_a_plugin_with_a_bad_hook_signature_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "bad_sig_plugin.py").write_text(
        "from art_some import hookimpl\n\n@hookimpl\ndef register_models(register, extra):\n    pass\n")
    fake_distribution(tmp_path, "bad-sig-plugin", "1.0", "badsig", "bad_sig_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="badsig"):
        assert "digits_cnn" in plugins.registered("models")


def write_plugin(folder, monkeypatch, dist, entry_name, source):
    """A one-module plugin ``source`` installed as entry point ``entry_name`` of distribution ``dist`` 1.0."""
    module = entry_name + "_plugin_module"
    (folder / f"{module}.py").write_text("from art_some import hookimpl\n\n" + source)
    fake_distribution(folder, dist, "1.0", entry_name, module)
    monkeypatch.syspath_prepend(str(folder))
    return module


RAISING = """
@hookimpl
def register_estimators(register):
    register("raiser_estimator", object)


@hookimpl
def register_models(register):
    raise RuntimeError("no GPU found")
"""

MISSPELT = """
@hookimpl
def register_model(register):
    register("typo_model", object)


@hookimpl
def register_estimators(register):
    register("typo_estimator", object)
"""


def test_a_plugin_whose_hook_raises_is_skipped_in_every_kind(tmp_path, monkeypatch):
    write_plugin(tmp_path, monkeypatch, "raiser-dist", "raiser", RAISING)
    with pytest.warns(UserWarning, match="'raiser' from raiser-dist 1.0 is skipped.*register_models.*no GPU found"):
        models = plugins.registered("models")
    assert "digits_cnn" in models
    assert "raiser_estimator" not in plugins.registered("estimators")  # half a plugin is worse than none
    assert "smoothed" in plugins.registered("estimators")
    assert "raiser" in plugins.skipped() and not plugins.get_plugin_manager().has_plugin("raiser")


def test_a_plugin_with_a_misspelt_hook_is_skipped(tmp_path, monkeypatch):
    write_plugin(tmp_path, monkeypatch, "typo-dist", "typo", MISSPELT)
    with pytest.warns(UserWarning, match="'typo' from typo-dist 1.0 is skipped.*'register_model'.*register_models"):
        pm = plugins.get_plugin_manager()
    pm.check_pending()  # nothing left to complain about
    assert "typo_estimator" not in plugins.registered("estimators")
    assert "digits_cnn" in plugins.registered("models")


def test_a_misspelt_hook_registered_after_loading_is_skipped_too():
    class Typo:
        @hookimpl
        def register_estimater(self, register):
            pass

    pm = plugins.get_plugin_manager()
    pm.register(Typo(), name="late-typo")
    with pytest.warns(UserWarning, match="'late-typo'.*register_estimater"):
        assert "smoothed" in plugins.registered("estimators")
    assert not pm.has_plugin("late-typo")


def test_a_hook_registering_without_a_name_skips_its_plugin():
    class Nameless:
        @hookimpl
        def register_trainers(self, register):
            register("", object)

    pm = plugins.get_plugin_manager()
    pm.register(Nameless(), name="nameless")
    with pytest.warns(UserWarning, match="'nameless'.*non-empty name"):
        assert "gaussian" in plugins.registered("trainers")


def test_a_clash_between_two_third_party_plugins_keeps_the_first_loaded(tmp_path, monkeypatch):
    source = 'X = {!r}\n\n@hookimpl\ndef register_models(register):\n    register("shared_name", X)\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_plugin(tmp_path / "b", monkeypatch, "second-dist", "second", source.format("second"))
    write_plugin(tmp_path / "a", monkeypatch, "first-dist", "first", source.format("first"))  # first on sys.path
    with pytest.warns(UserWarning, match="'shared_name'.*'first' \\(first-dist 1.0\\).*'second' \\(second-dist"):
        assert plugins.registered("models")["shared_name"] == "first"


def test_a_plugin_registering_one_name_twice_keeps_the_first():
    class Twice:
        @hookimpl
        def register_datasets(self, register):
            register("twice", 1)
            register("twice", 2)

    pm = plugins.get_plugin_manager()
    pm.register(Twice(), name="twice-plugin")
    with pytest.warns(UserWarning, match="registered twice by plugin 'twice-plugin'"):
        assert plugins.registered("datasets")["twice"] == 1


def test_the_plugins_command_lists_everything_else_when_plugins_are_broken(tmp_path, monkeypatch, example_installed):
    write_plugin(tmp_path, monkeypatch, "raiser-dist", "raiser", RAISING)
    write_plugin(tmp_path, monkeypatch, "typo-dist", "typo", MISSPELT)
    write_plugin(tmp_path, monkeypatch, "clash-dist", "clash",
                 '@hookimpl\ndef register_models(register):\n    register("digits_cnn", object)\n')
    (tmp_path / "import_fails.py").write_text("raise ImportError('boom')\n")
    fake_distribution(tmp_path, "import-fails", "1.0", "importfails", "import_fails")
    with pytest.warns(UserWarning) as caught:
        result = CliRunner().invoke(cli, ["plugins"])
    assert len(caught) == 4  # one warning per broken plugin and one for the clash
    assert result.exit_code == 0, result.output
    for name in ("smoothed", "flip_smoothed", "example_mlp", "digits_cnn", "median", "pgd"):
        assert name in result.output
    assert "raiser_estimator" not in result.output and "typo_estimator" not in result.output
    assert set(plugins.skipped()) == {"raiser", "typo", "importfails"}
    assert plugins.entries("models")["digits_cnn"].plugin == "art_some.builtins.models"


def test_the_plugins_command_survives_a_broken_plugin_in_a_fresh_process(tmp_path):
    import subprocess

    (tmp_path / "raiser_plugin_module.py").write_text("from art_some import hookimpl\n" + RAISING)
    fake_distribution(tmp_path, "raiser-dist", "1.0", "raiser", "raiser_plugin_module")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop(plugins.DISABLE_ENV, None)
    run = subprocess.run([sys.executable, "-m", "art_some.cli", "plugins"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "digits_cnn" in run.stdout and "raiser_estimator" not in run.stdout
    assert "'raiser' from raiser-dist 1.0 is skipped" in run.stderr


# --- Built-ins registered like plugins, with metadata the runs read; register_commands; _version ---------------


def test_builtins_are_plugin_modules_of_their_own():
    import importlib

    for module_name in plugins.DEFAULT_PLUGINS:
        assert module_name.startswith("art_some.builtins.")
        hooks = [n for n in vars(importlib.import_module(module_name)) if n.startswith("register_")]
        assert len(hooks) == 1, (module_name, hooks)  # one kind per module
    for kind in plugins.KINDS:
        assert {e.plugin for e in plugins.entries(kind).values()} <= set(plugins.DEFAULT_PLUGINS)
    assert plugins.entries("denoisers")["tiny_diffusion"].plugin == "art_some.builtins.denoisers"
    # The package faces hold no registrations any more.
    for face in ("art_some.estimators", "art_some.trainers", "art_some.models", "art_some.data",
                 "art_some.aggregations", "art_some.evaluation.attacks"):
        assert not [n for n in vars(importlib.import_module(face)) if n.startswith("register_")], face


def test_loading_the_plugin_manager_and_adding_commands_imports_neither_torch_nor_art():
    import subprocess

    code = ("import sys, click; from art_some import plugins; plugins.get_plugin_manager(); "
            "plugins.add_commands(click.Group()); "
            "sys.exit(1 if {'torch', 'art'} & set(sys.modules) else 0)")
    env = {**os.environ, plugins.DISABLE_ENV: "1"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_builtin_trainers_declare_what_training_decided_by_subclass():
    # The rules training.py applied with issubclass before the metadata, checked against what each trainer declares.
    from art_some.trainers import (
        ConsistencyTrainer,
        DenoisedClassifierTrainer,
        DiffusionCalibrationTrainer,
        GaussianAugmentationTrainer,
        SmoothAdvTrainer,
    )

    for name, cls in plugins.registered("trainers").items():
        declared = plugins.meta("trainers", name)
        role = ("denoiser" if issubclass(cls, DiffusionCalibrationTrainer)
                else "classifier" if issubclass(cls, DenoisedClassifierTrainer) else None)
        denoised = declared["estimator"] is not None and plugins.meta("estimators", declared["estimator"])["denoiser"]
        assert (declared["tunes"] if denoised else None) == role, name
        assert declared["estimator"] == ("denoised_multiscale" if role else None), name
        assert declared["distributed"] == (role != "denoiser"), name
        assert declared["cross_entropy"] == issubclass(cls, (GaussianAugmentationTrainer, ConsistencyTrainer,
                                                             SmoothAdvTrainer, DenoisedClassifierTrainer)), name
    assert plugins.meta("estimators", "some")["fits"] == "multihead"
    assert plugins.meta("estimators", "smoothed") == {"description": plugins.entries("estimators")["smoothed"].meta[
        "description"], "fits": "any", "denoiser": False}
    assert plugins.meta("attacks", "pgd")["bounded"] and not plugins.meta("attacks", "deepfool")["bounded"]


def test_builtin_models_declare_the_estimator_the_runs_chose_by_duck_typing():
    for name in plugins.registered("models"):
        assert plugins.meta("models", name)["estimator"] == ("some" if name.startswith("some_") else None), name
    for name in ("digits_cnn", "some_digits_cnn"):
        model = plugins.get("models", name)(num_classes=10)
        # The declared default agrees with the rule cli.py and training.py apply to the built model today.
        assert plugins.default_estimator(name) == ("some" if callable(getattr(model, "head_logits", None))
                                                   else "smoothed")
    assert plugins.default_estimator(None, None) == "smoothed"


THIRD_PARTY_TRAINERS = """
class DenoiserTuner:
    pass


class PlainTrainer:
    pass


@hookimpl
def register_trainers(register):
    register("my_denoiser_tuner", DenoiserTuner, tunes="denoiser", estimator="denoised_multiscale",
             distributed=False, description="tunes a denoiser")
    register("my_plain", PlainTrainer, cross_entropy=True, paper="me 2026")


@hookimpl
def register_models(register):
    register("my_heads", object, estimator="some")
    register("my_net", object)
"""


def test_a_third_party_trainer_and_model_are_treated_as_declared(tmp_path, monkeypatch):
    write_plugin(tmp_path, monkeypatch, "mine-dist", "mine", THIRD_PARTY_TRAINERS)
    tuner = plugins.meta("trainers", "my_denoiser_tuner")
    assert tuner == {"description": "tunes a denoiser", "tunes": "denoiser", "estimator": "denoised_multiscale",
                     "cross_entropy": False, "distributed": False, "train_defaults": {}}
    assert plugins.meta("estimators", tuner["estimator"])["denoiser"]  # so the run takes --denoiser and --sigmas
    plain = plugins.meta("trainers", "my_plain")
    assert plain["tunes"] == "classifier" and plain["estimator"] is None and plain["cross_entropy"]
    assert plain["distributed"] and plain["paper"] == "me 2026"  # other keys are kept as given
    assert plugins.default_estimator("my_heads") == "some"
    assert plugins.default_estimator("my_net") == "smoothed"

    class Heads:
        def head_logits(self, x):
            return x

    assert plugins.default_estimator("my_net", Heads()) == "some"  # undeclared: the multi-head duck test
    assert plugins.default_estimator("a_checkpoint_model_not_registered", Heads()) == "some"
    with pytest.raises(ValueError, match="unknown trainer 'nope'; registered: .*my_plain"):
        plugins.meta("trainers", "nope")


@pytest.mark.parametrize("meta, message", [
    ({"tunes": "both"}, "declares tunes='both'; choose one of 'classifier', 'denoiser'"),
    ({"cross_entropy": "yes"}, "declares cross_entropy='yes'; it must be bool"),
    ({"estimator": 3}, "declares estimator=3; it must be str or None"),
])
def test_a_plugin_declaring_bad_metadata_is_skipped(meta, message):
    class Bad:
        @hookimpl
        def register_trainers(self, register):
            register("bad_trainer", object, **meta)

        @hookimpl
        def register_models(self, register):
            register("bad_model", object)

    plugins.get_plugin_manager().register(Bad(), name="bad-meta")
    with pytest.warns(UserWarning, match=f"'bad-meta'.*trainer 'bad_trainer' {message}"):
        assert "gaussian" in plugins.registered("trainers")
    assert "bad_trainer" not in plugins.registered("trainers") and "bad_model" not in plugins.registered("models")


def builtin_group():
    import click

    @click.group()
    def group():
        pass

    @group.command()
    def certify():
        click.echo("built-in certify")

    return group


def test_the_example_plugin_adds_a_command(example_installed):
    import warnings

    group = builtin_group()
    plugins.add_commands(group)
    result = CliRunner().invoke(group, ["example-hello", "--name", "Ada"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Hello, Ada, from art-some-example-plugin; ")
    assert "flip_smoothed" in plugins.registered("estimators")
    from art_some import __version__

    assert plugins.commands() == {"example-hello": "example (art-some-example-plugin 0.1.0)",
                                  "predict": f"art_some.builtins.commands (art-some {__version__})"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugins.add_commands(group)  # once per group: nothing added twice, no clash with itself
    assert sorted(group.commands) == ["certify", "example-hello", "predict"]  # predict: a built-in, added alike
    plugins.reset()  # takes the plugins' commands off again
    assert sorted(group.commands) == ["certify"]


def test_a_plugin_whose_register_commands_raises_is_skipped_whole():
    import click

    class Raiser:
        @hookimpl
        def register_commands(self, cli):
            cli.add_command(click.Command("half", callback=lambda: None))
            raise RuntimeError("no display")

        @hookimpl
        def register_models(self, register):
            register("raiser_model", object)

    group = builtin_group()
    plugins.registered("models")  # built before: the registries are built again without the plugin
    plugins.get_plugin_manager().register(Raiser(), name="cmd-raiser")
    with pytest.warns(UserWarning, match="'cmd-raiser'.*register_commands hook raised RuntimeError: no display"):
        plugins.add_commands(group)
    assert sorted(group.commands) == ["certify", "predict"]  # the built-in predict, and nothing of the raiser
    assert "raiser_model" not in plugins.registered("models") and "cmd-raiser" in plugins.skipped()


def test_a_command_name_taken_already_keeps_the_first():
    import click

    class Clash:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def certify():
                click.echo("plugin certify")

            @cli.command()
            def extra():
                click.echo("extra")

    group = builtin_group()
    plugins.get_plugin_manager().register(Clash(), name="cmd-clash")
    with pytest.warns(UserWarning, match="command 'certify' from art-some plugin 'cmd-clash'.*already taken"):
        plugins.add_commands(group)
    assert CliRunner().invoke(group, ["certify"]).output == "built-in certify\n"
    assert CliRunner().invoke(group, ["extra"]).output == "extra\n"


def test_a_plugin_skipped_when_a_registry_is_built_loses_its_commands():
    import click

    class LateRaiser:
        @hookimpl
        def register_commands(self, cli):
            cli.add_command(click.Command("late", callback=lambda: None))

        @hookimpl
        def register_models(self, register):
            raise RuntimeError("broken")

    group = builtin_group()
    plugins.get_plugin_manager().register(LateRaiser(), name="late-raiser")
    plugins.add_commands(group)
    assert "late" in group.commands
    with pytest.warns(UserWarning, match="'late-raiser'.*register_models hook raised"):
        plugins.registered("models")
    assert "late" not in group.commands and set(plugins.commands()) == {"predict"}


def test_the_version_lives_in_its_own_module():
    from pathlib import Path

    import art_some
    from art_some._version import __version__

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    assert art_some.__version__ == __version__
    assert plugins.entries("estimators")["smoothed"].distribution == f"art-some {__version__}"
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "art_some._version.__version__"}
    source = (Path(art_some.__file__).parent / "plugins.py").read_text()
    assert "from art_some import __version__" not in source
