"""
Published and art-some checkpoints that must be refused before anything is inflated, allocated or written (issue 27):
NaN or zero normalisation buffers, zip bombs, forged sizes, and malicious pickles in every torch wording.
"""
import os
import pickle
import struct
import zipfile

import pytest
import torch
from click.testing import CliRunner

from art_some.cli import cli
from art_some.core.errors import NonFiniteError
from art_some.models import load_checkpoint, load_published
from art_some.models.published import REFUSED_GLOBAL
from tests.models.test_published import CIFAR_MEAN, CIFAR_STD, NormalizeLayer, RefCifarResNet, nn, randomise


def _fork(tmp_path, means, sds, name="fork.pth.tar"):
    """A Cohen-format file whose normalize layer registered its statistics as buffers (keys under ``0.``)."""
    net = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), randomise(RefCifarResNet(20, 3)))
    state = {"0.means": torch.tensor(means), "0.sds": torch.tensor(sds), **net.state_dict()}
    path = tmp_path / name
    torch.save({"arch": "cifar_resnet20", "state_dict": state}, path)
    return path


def _certify(tmp_path, model, *extra):
    from tests.models.test_published import image_folder

    data = tmp_path / "images"
    if not data.exists():
        image_folder(data)
    return CliRunner().invoke(cli, ["certify", "--model", str(model), "--dataset", "imagefolder", "--data-root",
                                    str(data), "--n0", "10", "--n", "20", "--sigma", "0.25", "--device", "cpu",
                                    "--output", str(tmp_path / "r.jsonl"), *extra])


@pytest.mark.parametrize("means,sds,words", [
    ([float("nan"), 0.5, 0.5], [0.25, 0.25, 0.25], ["0.means", "non-finite"]),
    ([0.5, 0.5, 0.5], [0.0, 0.0, 0.0], ["std", "> 0"]),
])
def test_nan_means_or_zero_deviations_are_refused_before_any_file_is_written(tmp_path, means, sds, words):
    path = _fork(tmp_path, means, sds)
    with pytest.raises((ValueError, NonFiniteError)) as err:
        load_published(path)
    assert str(path) in str(err.value) and all(w in str(err.value) for w in words)
    result = _certify(tmp_path, path)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "r.jsonl").exists()
    assert _certify(tmp_path, _fork(tmp_path, [0.5] * 3, [0.25] * 3, "good.pth.tar")).exit_code == 0  # not blocked


def _no_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on a file that declares more than it holds")

    monkeypatch.setattr(torch, "load", refuse)


def test_a_zip_bomb_is_refused_before_anything_is_inflated(tmp_path, monkeypatch):
    stored = tmp_path / "stored.pth"
    torch.save({"arch": "cifar_resnet20", "state_dict": {"1.fc.weight": torch.zeros(4_000_000)}}, stored)
    bomb = tmp_path / "bomb.pth.tar"
    with zipfile.ZipFile(stored) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for entry in src.infolist():
            dst.writestr(entry.filename, src.read(entry.filename))
    assert bomb.stat().st_size * 100 < stored.stat().st_size  # inflates more than 100:1
    _no_torch_load(monkeypatch)
    with pytest.raises(ValueError, match="declares .* bytes in a file of .* refusing to load it"):
        load_published(bomb)
    result = _certify(tmp_path, bomb)
    assert result.exit_code == 2 and "refusing to load it" in result.output and "safetensors" not in result.output


def test_a_legacy_file_declaring_a_4_tb_tensor_is_refused_without_allocating_it(tmp_path, monkeypatch):
    marker = object()

    class Forger(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 10**12) if obj is marker else None

    path = tmp_path / "forged.pth"
    with open(path, "wb") as f:  # torch's legacy layout: magic, protocol, system info, the object, storage keys
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        Forger(f, protocol=2).dump({"arch": "cifar_resnet20", "state_dict": {"1.fc.weight": marker}})
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", 10**12))
    _no_torch_load(monkeypatch)
    with pytest.raises(ValueError, match="declares tensors of 4000000000000 bytes"):
        load_published(path)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("name", ["evil.pth.tar", "evil.pth", "evil.pt"])
def test_a_malicious_pickle_is_one_line_naming_the_file_and_the_object(tmp_path, name):
    path = tmp_path / name
    torch.save({"state_dict": {"w": Evil()}}, path)
    result = CliRunner().invoke(cli, ["certify", "--model", str(path), "--sigma", "0.25", "--device", "cpu",
                                      "--output", str(tmp_path / "r.jsonl")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert str(path) in lines[0] and "posix.system" in lines[0] and "weights_only=False" not in lines[0]
    assert "header too large" not in lines[0] and not (tmp_path / "r.jsonl").exists()
    if name.endswith(".pt"):
        with pytest.raises(ValueError, match="posix.system"):
            load_checkpoint(path)


@pytest.mark.parametrize("text", [
    "Weights only load failed. Unsupported global: GLOBAL torch.optim.sgd.SGD was not an allowed global",
    "Weights only load failed.\n\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked.\n",
])
def test_every_torch_wording_of_a_refused_global_is_recognised(text):
    assert REFUSED_GLOBAL.search(text).group(1) in ("torch.optim.sgd.SGD", "posix.system")
