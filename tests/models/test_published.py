"""
Released checkpoints (Cohen et al.'s format and its descendants, SOME's, MACER's) load into art-some models with
their normalisation as the estimator's preprocessing. Each test writes a file with the released key layout and
random weights, built from reference networks written here in the authors' module layout (bearpaw's CIFAR ResNet
with ``downsample``, ``AvgPool2d(8)``; ``Sequential(NormalizeLayer, network)`` whose normalize layer keeps plain
tensor attributes), so that the comparison does not go through art-some's own architecture.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from art_some.cli import cli
from art_some.estimators.factory import create_estimator
from art_some.models import load_published
from art_some.models.published import NORMALIZATION

CIFAR_MEAN, CIFAR_STD = NORMALIZATION["cifar10"]


class NormalizeLayer(nn.Module):
    """Cohen et al.'s formula: means and sds repeated to (B, H, W, C) and permuted; no state-dict keys."""

    def __init__(self, means, sds):
        super().__init__()
        self.means, self.sds = torch.tensor(means), torch.tensor(sds)

    def forward(self, x):
        b, _, h, w = x.shape
        means = self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        sds = self.sds.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        return (x - means) / sds


class RefBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def ref_layer(inplanes, planes, n, stride):
    return nn.Sequential(*[RefBlock(inplanes if i == 0 else planes, planes, stride if i == 0 else 1)
                           for i in range(n)])


class RefCifarResNet(nn.Module):
    """The bearpaw / Cohen / MACER CIFAR ResNet's module names and forward pass."""

    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1, self.layer2 = ref_layer(16, 16, n, 1), ref_layer(16, 32, n, 2)
        self.layer3 = ref_layer(32, 64, n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


class RefSomeResNet(nn.Module):
    """SOME's multi-head CIFAR ResNet: shared conv1/bn1/layer1/layer2, heads[i] = Sequential(layer3, Linear)."""

    def __init__(self, depth, num_classes=10, num_heads=3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1, self.layer2 = ref_layer(16, 16, n, 1), ref_layer(16, 32, n, 2)
        self.heads = nn.Sequential(*[nn.Sequential(ref_layer(32, 64, n, 2), nn.Linear(64, num_classes))
                                     for _ in range(num_heads)])

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return [head[1](nn.functional.avg_pool2d(head[0](x), 8).view(x.size(0), -1)) for head in self.heads]


def randomise(module, seed=0):
    """Random weights and batch-norm statistics, so that a key mapped to the wrong tensor changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if key.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif tensor.dim() > 1:  # He-scaled, so that 110 layers stay finite
                tensor.copy_(noise * (2 / tensor[0].numel()) ** 0.5)
            elif key.endswith("bn2.weight"):  # residual branches small, as in a trained network
                tensor.copy_(0.2 * noise)
            elif key.endswith("weight"):
                tensor.copy_(1 + 0.2 * noise)
            else:
                tensor.copy_(0.1 * noise)
    return module.eval()


def with_optimizer_state(net):
    """A released file's 'optimizer' entry: SGD's state dict after one step (momentum buffers included)."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-6, momentum=0.9, weight_decay=1e-4)
    net(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()
    return opt.state_dict()


def inputs(n=4, size=32, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def estimator_logits(model, meta, x):
    """The logits the estimator certifies with: its preprocessing (the checkpoint's mean/std), then the model."""
    info = {"num_classes": meta["num_classes"], "input_shape": meta["input_shape"], "mean": meta["mean"],
            "std": meta["std"]}
    clf = create_estimator("smoothed", model, info, sigma=0.25, device="cpu")
    with torch.no_grad():
        return clf.logits(x)


# The four repositories that share Cohen et al.'s train.py format (SmoothAdv, Consistency and SmoothMix add
# nothing to it); the minimal file is what certify.py reads.
COHEN_FIELDS = {"minimal": ("arch", "state_dict"), "released": ("epoch", "arch", "state_dict", "optimizer")}


@pytest.mark.parametrize("arch,fields,legacy", [("cifar_resnet20", "minimal", False),
                                                ("cifar_resnet20", "released", True),
                                                ("cifar_resnet110", "released", False)])
def test_cohen_cifar_checkpoint_gives_the_authors_logits(tmp_path, arch, fields, legacy):
    """``legacy``: the pre-1.6 (non-zip) torch format of the 2019 releases, which weights_only also reads."""
    depth = int(arch.rsplit("resnet", 1)[1])
    net = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), randomise(RefCifarResNet(depth)))
    optimizer = with_optimizer_state(net)
    blob = {"epoch": 150, "arch": arch, "state_dict": net.state_dict(), "optimizer": optimizer}
    assert all(k.startswith("1.") for k in blob["state_dict"])  # the normalize layer has no keys
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({k: blob[k] for k in COHEN_FIELDS[fields]}, path, _use_new_zipfile_serialization=not legacy)

    model, meta = load_published(path)
    assert meta["arch"] == arch and meta["format"] == "cohen" and meta["dataset"] == "cifar10"
    assert meta["mean"] == pytest.approx(CIFAR_MEAN) and meta["std"] == pytest.approx(CIFAR_STD)
    assert meta["num_classes"] == 10 and meta["input_shape"] == [3, 32, 32]
    assert meta.get("epoch") == (150 if fields == "released" else None)
    x = inputs()
    with torch.no_grad():
        expected = net(x)
        assert torch.isfinite(expected).all() and expected.std() > 0.1
        mean, std = torch.tensor(meta["mean"]).view(1, 3, 1, 1), torch.tensor(meta["std"]).view(1, 3, 1, 1)
        torch.testing.assert_close(model((x - mean) / std), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(estimator_logits(model, meta, x), expected, rtol=1e-5, atol=1e-5)


class InputCenterLayer(nn.Module):
    """SmoothAdv's layer: the means subtracted, nothing divided; no state-dict keys."""

    def __init__(self, means):
        super().__init__()
        self.means = torch.tensor(means)

    def forward(self, x):
        b, _, h, w = x.shape
        return x - self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)


def test_smoothadv_center_layer_needs_its_arch_name(tmp_path):
    net = nn.Sequential(InputCenterLayer(CIFAR_MEAN), randomise(RefCifarResNet(20)))
    path = tmp_path / "checkpoint.pth.tar"
    optimizer = with_optimizer_state(net)
    torch.save({"epoch": 150, "arch": "cifar_resnet20", "state_dict": net.state_dict(), "optimizer": optimizer}, path)
    model, meta = load_published(path, arch="smoothadv_cifar_resnet20")
    assert meta["normalize"] == "center" and meta["std"] == [1.0] * 3
    assert meta["mean"] == pytest.approx(CIFAR_MEAN)
    x = inputs()
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(estimator_logits(model, meta, x), expected, rtol=1e-5, atol=1e-5)
    _, cohen = load_published(path)  # the file's own arch field: Cohen's standardisation, not SmoothAdv's
    assert cohen["normalize"] == "standardize" and cohen["std"] == pytest.approx(CIFAR_STD)


def test_preprocessing_is_cohens_normalize_layer():
    x = inputs(n=2)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close((x - mean) / std, NormalizeLayer(CIFAR_MEAN, CIFAR_STD)(x))
    info = {"num_classes": 10, "input_shape": (3, 32, 32), "mean": CIFAR_MEAN, "std": CIFAR_STD}
    clf = create_estimator("smoothed", nn.Identity(), info, sigma=0.25, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(clf.preprocess(x), NormalizeLayer(CIFAR_MEAN, CIFAR_STD)(x))


def test_cohen_imagenet_resnet50_in_dataparallel(tmp_path):
    import torchvision

    mean, std = NORMALIZATION["imagenet"]
    torch.manual_seed(0)
    base = torchvision.models.resnet50(weights=None, num_classes=7)
    with torch.no_grad():  # BN statistics away from their defaults
        for m in base.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
    net = nn.Sequential(NormalizeLayer(mean, std), nn.DataParallel(base)).eval()
    assert next(iter(net.state_dict())).startswith("1.module.")
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet50", "state_dict": net.state_dict()}, path)

    model, meta = load_published(path)
    assert meta["dataset"] == "imagenet" and meta["num_classes"] == 7 and meta["input_shape"] == [3, 224, 224]
    assert meta["mean"] == pytest.approx(mean) and meta["std"] == pytest.approx(std)
    x = inputs(n=2, size=64)
    with torch.no_grad():
        torch.testing.assert_close(estimator_logits(model, {**meta, "input_shape": [3, 64, 64]}, x), net(x),
                                   rtol=1e-4, atol=1e-4)


def test_normalize_buffers_in_the_file_win(tmp_path):
    net = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), randomise(RefCifarResNet(20)))
    state = {"0.means": torch.tensor([0.5, 0.5, 0.5]), "0.sds": torch.tensor([0.25, 0.25, 0.25]),
             **net.state_dict()}
    path = tmp_path / "fork.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": state}, path)
    _, meta = load_published(path)
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3


@pytest.mark.parametrize("arch", [None, "R20", "some_cifar_resnet20"])
def test_some_multihead_checkpoint(tmp_path, arch):
    ref = randomise(RefSomeResNet(20, num_classes=10, num_heads=3))
    net = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), ref).eval()
    path = tmp_path / "epoch150.pth"
    torch.save({"state_dict": net.state_dict()}, path)  # SOME's train.py saves nothing else

    model, meta = load_published(path, arch=arch)
    assert meta["arch"] == "some_cifar_resnet20" and meta["format"] == "some" and model.num_heads == 3
    x = inputs()
    with torch.no_grad():
        heads = net(x)
        mean, std = torch.tensor(meta["mean"]).view(1, 3, 1, 1), torch.tensor(meta["std"]).view(1, 3, 1, 1)
        for ours, theirs in zip(model.head_logits((x - mean) / std), heads):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(estimator_logits(model, meta, x), torch.stack(heads).sum(0), rtol=1e-5, atol=1e-5)


class RefSomeResNet50(nn.Module):
    """SOME's ImageNet multi-head ResNet-50: torchvision's stem and layer1-3 shared, heads[i] = (layer4, Linear)."""

    def __init__(self, num_classes=5, num_heads=2):
        import torchvision

        super().__init__()
        base = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = base.conv1, base.bn1, base.relu, base.maxpool
        self.layer1, self.layer2, self.layer3 = base.layer1, base.layer2, base.layer3
        self.heads = nn.Sequential(*[nn.Sequential(torchvision.models.resnet50(weights=None).layer4,
                                                   nn.Linear(2048, num_classes)) for _ in range(num_heads)])

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))))
        return [h[1](nn.functional.avg_pool2d(h[0](x), 7, stride=1).view(x.size(0), -1)) for h in self.heads]


def test_some_imagenet_resnet50_in_dataparallel(tmp_path):
    mean, std = NORMALIZATION["imagenet"]
    torch.manual_seed(0)
    ref = RefSomeResNet50(num_classes=5, num_heads=2)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
    net = nn.Sequential(NormalizeLayer(mean, std), nn.DataParallel(ref)).eval()
    assert any(k.startswith("1.module.heads.1.0.") for k in net.state_dict())
    path = tmp_path / "epoch90.pth"
    torch.save({"state_dict": net.state_dict()}, path)

    model, meta = load_published(path)
    assert meta["arch"] == "some_resnet50" and meta["dataset"] == "imagenet" and model.num_heads == 2
    x = inputs(n=2, size=224)
    with torch.no_grad():
        expected = torch.stack(net(x)).sum(0)
    torch.testing.assert_close(estimator_logits(model, meta, x), expected, rtol=1e-4, atol=1e-4)


def test_macer_checkpoint_has_no_normalisation(tmp_path):
    ref = randomise(RefCifarResNet(110))
    path = tmp_path / "440.pth"
    torch.save({"net": ref.state_dict(), "epoch": 440}, path)

    model, meta = load_published(path)
    assert meta["arch"] == "macer_resnet110" and meta["mean"] == [0.0] and meta["std"] == [1.0]
    assert meta["epoch"] == 440
    x = inputs(n=2)
    with torch.no_grad():
        torch.testing.assert_close(estimator_logits(model, meta, x), ref(x), rtol=1e-5, atol=1e-5)


def cohen_file(tmp_path, arch="cifar_resnet20", num_classes=10, name="checkpoint.pth.tar", legacy=False, **extra):
    net = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), randomise(RefCifarResNet(20, num_classes)))
    path = tmp_path / name
    blob = {"arch": arch, "state_dict": net.state_dict(), **extra}
    torch.save({k: v for k, v in blob.items() if v is not None}, path, _use_new_zipfile_serialization=not legacy)
    return path, net


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_optimizer_is_refused_in_one_line(tmp_path, legacy):
    net = RefCifarResNet(20)
    path, _ = cohen_file(tmp_path, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), legacy=legacy)
    with pytest.raises(ValueError) as err:
        load_published(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "torch.optim.sgd.SGD" in message


def test_cli_names_the_pickled_object_without_arch(tmp_path):
    path, _ = cohen_file(tmp_path, optimizer=torch.optim.SGD(RefCifarResNet(20).parameters(), lr=0.1))
    result = CliRunner().invoke(cli, ["certify", "--model", str(path), "--sigma", "0.25",
                                      "--output", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and "torch.optim.sgd.SGD" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_file_that_is_not_torch_is_one_line(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable torch file") as err:
        load_published(path)
    assert "\n" not in str(err.value)


def test_another_architecture_names_the_keys(tmp_path):
    path, _ = cohen_file(tmp_path, arch="cifar_resnet110")
    with pytest.raises(ValueError, match="does not match arch 'cifar_resnet110'.*missing keys layer1.3") as err:
        load_published(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_unknown_or_missing_architecture(tmp_path):
    path, _ = cohen_file(tmp_path, arch="wide_resnet")
    with pytest.raises(ValueError, match="'wide_resnet' is not supported; --arch takes: a published architecture "
                       r"\(cifar_resnet110.*a registered model \(.*digits_cnn"):
        load_published(path)
    path, _ = cohen_file(tmp_path, arch=None, name="noarch.pth.tar")
    with pytest.raises(ValueError, match="names no architecture.*give --arch"):
        load_published(path)
    assert load_published(path, arch="cifar_resnet20")[1]["arch"] == "cifar_resnet20"
    bad = tmp_path / "flat.pth"
    torch.save({"arch": "cifar_resnet20", "state_dict": RefCifarResNet(20).state_dict()}, bad)
    with pytest.raises(ValueError, match="no key starts with '1.'"):
        load_published(bad)


def image_folder(root, classes=3, per_class=2):
    from PIL import Image

    gen = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(gen.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_certify_cli_end_to_end_with_a_released_file(tmp_path):
    data = image_folder(tmp_path / "images")
    path, _ = cohen_file(tmp_path, num_classes=3, arch=None)
    out = tmp_path / "run.jsonl"
    args = ["certify", "--model", str(path), "--dataset", "imagefolder", "--data-root", str(data), "--n0", "10",
            "--n", "50", "--batch-size", "50", "--device", "cpu", "--output", str(out)]
    result = CliRunner().invoke(cli, args + ["--sigma", "0.25"])
    assert result.exit_code == 2 and "give --arch" in result.output
    result = CliRunner().invoke(cli, args + ["--arch", "cifar_resnet20"])
    assert result.exit_code == 2 and "--sigma is required" in result.output
    result = CliRunner().invoke(cli, args + ["--arch", "cifar_resnet20", "--sigma", "0.25"])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines[1:]]
    assert len(records) == 6 and all(r["sigma"] == 0.25 for r in records)
    assert out.with_suffix(".tsv").read_text().startswith("idx\tlabel\tpredict\tradius\tcorrect\ttime")
    assert json.dumps(list(CIFAR_MEAN))[1:-1].split(",")[0] in lines[0]  # the header records Cohen's mean


def test_cli_detects_the_arch_field(tmp_path):
    data = image_folder(tmp_path / "images", classes=3, per_class=1)
    path, _ = cohen_file(tmp_path, num_classes=3)
    out = tmp_path / "run.jsonl"
    result = CliRunner().invoke(cli, ["certify", "--model", str(path), "--dataset", "imagefolder", "--data-root",
                                      str(data), "--sigma", "0.5", "--n0", "10", "--n", "20", "--device", "cpu",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 4
    result = CliRunner().invoke(cli, ["certify", "--model", "cifar_resnet20", "--arch", "cifar_resnet20",
                                      "--sigma", "0.5", "--output", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and "is not a file" in result.output


def test_evaluate_audits_a_released_multihead_file(tmp_path):
    data = image_folder(tmp_path / "images", classes=3, per_class=1)
    net = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), randomise(RefSomeResNet(20, num_classes=3, num_heads=2)))
    path = tmp_path / "epoch150.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(path), "--dataset", "imagefolder", "--data-root",
                                      str(data), "--sigma", "0.25", "--n0", "10", "--n", "20", "--verify-n", "20",
                                      "--attack", "pgd", "--eps", "0.5", "--budget", "pgd.max_iter=1",
                                      "--max-inputs", "2", "--device", "cpu", "--output-dir", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "audit" / "audit.json").is_file()
