"""
A researcher's own model (issue 28): a plain ``torch.save(model.state_dict())`` with ``--arch`` naming any registered
model, a class of their own with ``--model-module``, and checkpoint errors that each lead to a format that loads.
"""
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from art_some.cli import cli
from art_some.data import digits_arrays
from art_some.models import DigitsCNN, save_checkpoint
from art_some.runs.loader import load_model
from art_some.runs.records import read_header, read_jsonl

CERTIFY = ["certify", "--sigma", "0.25", "--n0", "10", "--n", "40", "--max-inputs", "3", "--device", "cpu"]
NET = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's own classifier, not registered anywhere."""

    def __init__(self, num_classes=10, in_channels=1, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)


def make():
    return TinyNet(hidden=16)
'''


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return result.output.strip().splitlines()[-1]


def trained_digits_cnn():
    torch.manual_seed(3)
    return DigitsCNN().eval()


def _same_outputs(a, b) -> bool:
    x = torch.from_numpy(digits_arrays("test")[0][:8])
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """``mynets.py`` in a folder on the path: importable as ``mynets:TinyNet`` and as a file."""
    (tmp_path / "mynets.py").write_text(textwrap.dedent(NET))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "mynets.py"


def test_a_plain_state_dict_loads_with_arch_naming_a_registered_model(tmp_path):
    model = trained_digits_cnn()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    save_file(model.state_dict(), str(tmp_path / "weights.safetensors"))
    torch.save({"arch": "digits_cnn", "state_dict": model.state_dict()}, tmp_path / "wrapped.pth")  # old advice
    for name, arch in (("weights.pt", "digits_cnn"), ("weights.safetensors", "digits_cnn"), ("wrapped.pth", None)):
        loaded, meta = load_model(tmp_path / name, arch=arch, num_classes=10, in_channels=1)
        assert meta["model"] == "digits_cnn" and _same_outputs(loaded, model), name
    out = tmp_path / "r.jsonl"
    result = run(*CERTIFY, "--model", tmp_path / "weights.pt", "--arch", "digits_cnn", "--output", out)
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out)) == 3 and read_header(out)["source"]["model"].endswith("weights.pt")


def test_a_registered_model_that_is_also_a_published_architecture_takes_its_plain_weights(tmp_path):
    torch.manual_seed(0)
    from art_some.models import create_model

    net = create_model("cifar_resnet20", num_classes=10, in_channels=1).eval()
    torch.save(net.state_dict(), tmp_path / "r20.pt")
    loaded, meta = load_model(tmp_path / "r20.pt", arch="cifar_resnet20", num_classes=10, in_channels=1)
    assert meta["model_kwargs"] == {"num_classes": 10, "in_channels": 1} and "format" not in meta
    with torch.no_grad():
        x = torch.rand(2, 1, 8, 8)
        assert torch.equal(loaded(x), net(x))


def test_every_checkpoint_error_leads_to_a_format_that_loads(tmp_path):
    model = trained_digits_cnn()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    line = error_line(run(*CERTIFY, "--model", tmp_path / "weights.pt", "--output", tmp_path / "r.jsonl"))
    for advice in ("save_checkpoint(path, model, NAME, {'num_classes': N})",
                   "torch.save(model.state_dict(), FILE) with --arch NAME", "--model-module pkg.mod:factory"):
        assert advice in line, line
    line = error_line(run(*CERTIFY, "--model", tmp_path / "weights.pt", "--arch", "some_digits_cnn",
                          "--output", tmp_path / "r.jsonl"))
    assert "does not hold the weights of --arch some_digits_cnn (built with num_classes=10, in_channels=1 from the " \
           "data: --channels and --resize set its inputs): missing keys" in line
    assert line.endswith("give the --arch or --model-module the weights were saved from")
    line = error_line(run(*CERTIFY, "--model", tmp_path / "weights.pt", "--arch", "lenet",
                          "--output", tmp_path / "r.jsonl"))
    assert "'lenet' is not supported; --arch takes: a published architecture (" in line and "digits_cnn" in line
    assert not (tmp_path / "r.jsonl").exists()
    # What the messages say works: save_checkpoint's file, or a torch file with the same metadata, needs no option.
    save_checkpoint(tmp_path / "m.safetensors", model, "digits_cnn", {"num_classes": 10})
    torch.save({"state_dict": model.state_dict(), "meta": {"model": "digits_cnn", "model_kwargs": {"num_classes": 10}}},
               tmp_path / "m.pt")
    for name in ("m.safetensors", "m.pt"):
        result = run(*CERTIFY, "--model", tmp_path / name, "--output", tmp_path / f"{name}.jsonl")
        assert result.exit_code == 0 and len(read_jsonl(tmp_path / f"{name}.jsonl")) == 3, result.output
    assert _same_outputs(load_model(tmp_path / "m.pt")[0], model)


def test_a_user_factory_certifies_from_a_module_or_a_file(tmp_path, user_module):
    import mynets

    torch.manual_seed(1)
    net = mynets.TinyNet().eval()
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    loaded, meta = load_model(tmp_path / "tiny.pt", model_module="mynets:TinyNet", num_classes=10, in_channels=1)
    assert meta == {"model": "mynets:TinyNet", "model_kwargs": {"num_classes": 10, "in_channels": 1},
                    "model_module": "mynets:TinyNet"} and _same_outputs(loaded, net)
    by_file = []
    for ref in ("mynets:TinyNet", f"{user_module}:TinyNet"):
        out = tmp_path / f"{len(by_file)}.jsonl"
        result = run(*CERTIFY, "--model", tmp_path / "tiny.pt", "--model-module", ref, "--output", out)
        assert result.exit_code == 0, result.output
        by_file.append([{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(out)])
    assert by_file[0] == by_file[1] and len(by_file[0]) == 3
    line = error_line(run(*CERTIFY, "--model", tmp_path / "tiny.pt", "--model-module", "mynets:make",
                          "--output", tmp_path / "x.jsonl"))  # hidden 16, not the file's 32
    assert "does not hold the weights of --model-module mynets:make: misshapen body.1.weight (32, 64) vs (16, 64)" \
        in line
    for ref, message in (("mynets", "must look like pkg.mod:factory or path/to/file.py:factory"),
                         ("nomodule:Net", "cannot import nomodule (ModuleNotFoundError"),
                         ("mynets:Missing", "mynets has no class or function 'Missing'")):
        assert message in error_line(run(*CERTIFY, "--model", tmp_path / "tiny.pt", "--model-module", ref,
                                         "--output", tmp_path / "x.jsonl"))
    assert not (tmp_path / "x.jsonl").exists()


def test_a_user_factory_trains_and_its_checkpoint_asks_for_the_module(tmp_path, user_module):
    out = tmp_path / "run"
    result = run("train", "--method", "gaussian", "--model-module", "mynets:TinyNet", "--epochs", 1, "--device", "cpu",
                 "--optimizer", "adam", "--lr", "0.01", "--output-dir", out)
    assert result.exit_code == 0, result.output
    checkpoint = out / "model.safetensors"
    line = error_line(run(*CERTIFY, "--model", checkpoint, "--output", tmp_path / "r.jsonl"))
    assert line.endswith("holds a model of your own class mynets:TinyNet; pass --model-module mynets:TinyNet (art-some "
                         "imports no code that a file names)")
    result = run(*CERTIFY[:1], *CERTIFY[3:], "--model", checkpoint, "--model-module", "mynets:TinyNet",
                 "--output", tmp_path / "r.jsonl")  # sigma from the checkpoint
    assert result.exit_code == 0, result.output
    header = read_header(tmp_path / "r.jsonl")
    assert header["sigma"] == 0.25 and header["source"]["model_module"] == "mynets:TinyNet"
    resumed = run("train", "--method", "gaussian", "--model-module", "mynets:TinyNet", "--epochs", 2, "--device",
                  "cpu", "--optimizer", "adam", "--lr", "0.01", "--output-dir", out)
    assert resumed.exit_code == 0 and "Resuming" in resumed.output, resumed.output


def test_model_and_module_options_are_checked_before_any_file(tmp_path, user_module):
    out = tmp_path / "r.jsonl"
    cases = [
        ([], "give --model: a registered model (art-some plugins lists them) or a checkpoint file; or --model-module"),
        (["--model-module", "mynets:TinyNet", "--model", "nofile.pt"], "--model 'nofile.pt' is not a file: with "
                                                                       "--model-module, --model names the file"),
        (["--model", "digits_cnn", "--arch", "digits_cnn"], "--arch digits_cnn names what the weights in --model FILE "
                                                            "are for, but --model 'digits_cnn' is not a file"),
    ]
    for extra, message in cases:
        assert message in error_line(run(*CERTIFY, *extra, "--output", out)), extra
    random = run(*CERTIFY, "--model-module", "mynets:TinyNet", "--output", out)
    assert random.exit_code == 0 and "randomly initialised" in random.output, random.output
    assert np.all([r["n"] == 40 for r in read_jsonl(out)])
