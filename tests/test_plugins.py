import os
import shutil
import sys

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


def test_name_clash_names_both_plugins():
    class Clash:
        @hookimpl
        def register_estimators(self, register):
            register("smoothed", object)

    pm = plugins.get_plugin_manager()
    pm.register(Clash(), name="clashing-plugin")
    try:
        with pytest.raises(ValueError, match="art_some.estimators.*clashing-plugin"):
            plugins.registered("estimators")
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

    names = [n for n in dir(hookspecs) if n.startswith("register_")]
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
