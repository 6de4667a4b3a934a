import pickle

import numpy as np
import pytest
import torch

from art_some.data import digits_arrays, load_dataset
from art_some.models import CifarResNet, DigitsCNN, create_model, load_checkpoint, save_checkpoint


def test_digits_split_is_fixed_and_scaled():
    x, y = digits_arrays("train")
    xt, yt = digits_arrays("test")
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert set(np.unique(yt)) == set(range(10))
    np.testing.assert_array_equal(digits_arrays("test")[1], yt)
    with pytest.raises(ValueError, match="split"):
        digits_arrays("validation")


def test_imagefolder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "test" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((6, 5, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "test" / cls / f"{i}.png")
    data, info = load_dataset("imagefolder", root=tmp_path, split="test")
    assert len(data) == 4 and info["num_classes"] == 2 and info["input_shape"] == (3, 6, 5)
    x, label = data[3]
    assert x.shape == (3, 6, 5) and label == 1


def test_cifar10_reads_the_torchvision_layout(tmp_path, monkeypatch):
    from torchvision import datasets

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 255, "labels": [3, 8]}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    monkeypatch.setattr(datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    data, info = load_dataset("cifar10", root=tmp_path, split="test")
    x, label = data[1]
    assert len(data) == 2 and x.shape == (3, 32, 32) and label == 8 and info["num_classes"] == 10
    assert 0 <= float(x.min()) and float(x.max()) <= 1


def test_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="data root"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="CIFAR-10 not found"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        load_dataset("imagenet", root=tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")


def test_model_factory_and_resnet_depths():
    assert isinstance(create_model("digits_cnn"), DigitsCNN)
    net = create_model("cifar_resnet20", num_classes=7)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in CifarResNet(110).modules()) >= 109
    with pytest.raises(ValueError, match="6k\\+2"):
        CifarResNet(depth=21)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    model = DigitsCNN(num_classes=10)
    path = tmp_path / f"m{suffix}"
    meta = {"sigma": 0.25, "input_shape": [1, 8, 8]}
    if suffix == ".safetensors":
        save_checkpoint(path, model, "digits_cnn", {"num_classes": 10}, **meta)
    else:
        torch.save({"state_dict": model.state_dict(),
                    "meta": {"model": "digits_cnn", "model_kwargs": {"num_classes": 10}, **meta}}, path)
    loaded, got = load_checkpoint(path)
    assert got["sigma"] == 0.25 and not loaded.training
    x = torch.rand(3, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), loaded(x))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path / "bad.safetensors")
    # Pickled code is refused: torch files are read with weights_only=True.
    torch.save({"state_dict": {}, "meta": {"model": "digits_cnn"}, "evil": object()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "evil.pt")
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(wrong, CifarResNet(20), "digits_cnn", {"num_classes": 10})
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(wrong)


def test_checkpoints_get_the_same_permissions_as_other_outputs(tmp_path):
    import os
    import stat

    from art_some.models import DigitsCNN, save_checkpoint

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, DigitsCNN(), "digits_cnn", {"num_classes": 10})
    other = tmp_path / "other.txt"
    other.write_text("x")
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(other).st_mode)


def test_an_unknown_dataset_names_the_option():
    import pytest

    from art_some.data import load_dataset

    with pytest.raises(ValueError, match=r"unknown dataset 'mnist' \(--dataset\); registered: .*digits"):
        load_dataset("mnist")
