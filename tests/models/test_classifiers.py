"""Classifiers by name (timm:, hf:, torchvision:), their preprocessing, presets, and the DDS cascade end to end."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from art_some import DenoisedMultiScaleClassifier
from art_some.cli import cli
from art_some.models import adm
from art_some.models.classifiers import ResizeInput, classifier_preprocessing, load_classifier
from art_some.models.diffusion import create_denoiser, randomize, tiny_adm_config

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 3-class ImageFolder of 8 x 8 RGB images, a tiny 3-channel ADM checkpoint and its config."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pipeline")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / "images" / f"c{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(root / "images" / f"c{c}" / f"{i}.png")
    cfg = tiny_adm_config(in_channels=3)
    torch.save(randomize(adm.ADMUNet(cfg), 0).state_dict(), root / "tiny_adm.pt")
    return root, cfg


# ---------------------------------------------------------------------------------------------------------------
# By name, from Python
# ---------------------------------------------------------------------------------------------------------------
def test_timm_by_name_with_a_local_weights_file(tmp_path):
    from safetensors.torch import save_file

    model, meta = load_classifier("timm:test_vit", num_classes=3)
    assert meta["source"] == "timm" and meta["model_input_size"] == [3, 160, 160] and meta["num_classes"] == 3
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["pretrained"] is None and meta["interpolation"] == "bicubic"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    again, meta = load_classifier(f"timm:test_vit@{tmp_path / 'w.safetensors'}", num_classes=3)
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert meta["pretrained"] == str(tmp_path / "w.safetensors")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError) as err:
        load_classifier(f"timm:test_vit@{tmp_path / 'other.pt'}", num_classes=3)
    text = str(err.value)
    assert "\n" not in text and "other.pt" in text and "missing" in text and "weight" in text


def test_hf_folder_gives_logits_and_its_processor_settings(tmp_path):
    config = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32, num_labels=3)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 0.5], "size": {"height": 16, "width": 16}}))
    model, meta = load_classifier(f"hf:{tmp_path / 'vit'}", num_classes=3)
    out = model(torch.rand(2, 3, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    assert meta["std"] == [0.25, 0.5, 0.5] and meta["model_input_size"] == [3, 16, 16]
    with pytest.raises(ValueError, match="has 3 labels but the data set has 10"):
        load_classifier(f"hf:{tmp_path / 'vit'}", num_classes=10)


def test_torchvision_by_name():
    model, meta = load_classifier("torchvision:resnet18", num_classes=4)
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["model_input_size"] == [3, 224, 224]
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 4)
    with pytest.raises(ValueError, match="torchvision has no model 'resnet19'"):
        load_classifier("torchvision:resnet19")


def test_resize_is_bicubic_antialiased_and_recorded():
    _, meta = load_classifier("torchvision:resnet18", num_classes=3)
    pre = classifier_preprocessing(meta, (3, 32, 32))
    (resize,) = pre["preprocessing_defences"]
    x = torch.rand(2, 3, 32, 32)
    want = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(resize.forward(x)[0], want)
    assert resize.params == ["size", "interpolation", "antialias"]
    assert "preprocessing_defences" not in classifier_preprocessing(meta, (3, 224, 224))
    with pytest.raises(ValueError, match="interpolation"):
        ResizeInput((8, 8), "lanczos")


@pytest.mark.parametrize("extra,ref", [("timm", "timm:test_vit"), ("hf", "hf:some/model")])
def test_a_missing_extra_is_one_line_naming_it(monkeypatch, extra, ref):
    import importlib

    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name in ("timm", "transformers"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ImportError) as err:
        load_classifier(ref)
    assert f'pip install "art-some[{extra}]"' in str(err.value) and "\n" not in str(err.value)
    result = run("certify", "--model", ref, "--sigma", "0.25", "--output", "unused.jsonl")
    assert f"art-some[{extra}]" in error_line(result)


# ---------------------------------------------------------------------------------------------------------------
# The cascade with an ADM denoiser and a timm classifier, from Python and from the command line
# ---------------------------------------------------------------------------------------------------------------
def test_cascade_certifies_with_adm_and_timm_from_python(folder):
    root, cfg = folder
    from art_some.models.diffusion import load_adm

    torch.manual_seed(0)
    model, meta = load_classifier("timm:test_vit", num_classes=3, img_size=32, patch_size=8)
    assert meta["model_input_size"] == [3, 32, 32]
    est = DenoisedMultiScaleClassifier(model, None, (3, 8, 8), 3, denoiser=load_adm(root / "tiny_adm.pt", cfg),
                                       sigmas=(0.25, 0.5), device_type="cpu", clip_values=(0.0, 1.0),
                                       sample_size=10, **classifier_preprocessing(meta, (3, 8, 8)))
    x = np.random.default_rng(1).random((2, 3, 8, 8)).astype(np.float32)
    res = est.certify_detailed(x, n=40)
    assert res.predict.shape == (2,) and np.all(res.radius >= 0)
    again = est.certify_detailed(x, n=40)
    assert np.array_equal(res.predict, again.predict) and np.array_equal(res.radius, again.radius)


def test_cascade_certifies_from_the_cli_with_a_preset_overridden(folder, tmp_path):
    root, cfg = folder
    out = tmp_path / "r.jsonl"
    result = run("certify", "--preset", "multiscale-cifar10", "--model", "timm:test_vit", "--dataset", "imagefolder",
                 "--data-root", root / "images", "--denoiser", f"adm:{root / 'tiny_adm.pt'}", "--denoiser-config",
                 json.dumps(cfg), "--n0", 10, "--n", 30, "--batch-size", 90, "--max-inputs", 2, "--device", "cpu",
                 "--output", out)
    assert result.exit_code == 0, result.output
    header = json.loads(out.read_text().splitlines()[0])["art_some_header"]
    params = header["estimator_params"]
    assert params["sigmas"] == [1.0, 0.5, 0.25] and params["p0"] == 0.5  # the preset's
    assert header["n"] == 30 and header["n0"] == 10 and header["dataset"] == "imagefolder"  # the command line's
    assert params["preprocessing_defences"][0]["size"] == [160, 160]
    assert params["preprocessing_defences"][0]["interpolation"] == "bicubic"
    assert params["preprocessing"]["mean"] == [[[0.5]], [[0.5]], [[0.5]]]
    assert params["denoiser"]["class"].endswith("DiffusionDenoiser")
    assert len(out.read_text().splitlines()) == 3


def test_preset_and_denoiser_errors_are_one_line(folder, tmp_path):
    root, cfg = folder
    out = tmp_path / "r.jsonl"
    assert "needs --denoiser" in error_line(run("certify", "--preset", "dds-cifar10", "--model", "timm:test_vit",
                                                "--sigma", 0.25, "--output", out))
    assert "needs --sigma" in error_line(run("certify", "--preset", "dds-cifar10", "--model", "timm:test_vit",
                                             "--denoiser", root / "tiny_adm.pt", "--output", out))
    assert "ADM checkpoint not found" in error_line(run("certify", "--model", "timm:test_vit", "--sigma", 0.25,
                                                        "--denoiser", "adm:nothing.pt", "--output", out))
    line = error_line(run("certify", "--model", "timm:test_vit", "--sigma", 0.25, "--dataset", "imagefolder",
                          "--data-root", root / "images", "--denoiser", f"adm:{root / 'tiny_adm.pt'}",
                          "--denoiser-config", "adm-cifar10-uncond-50m", "--device", "cpu", "--output", out))
    assert "tiny_adm.pt" in line and "adm-cifar10-uncond-50m" in line
    assert not out.exists()


@pytest.mark.parametrize("ref,message", [
    ("timm:no_such_net", "timm has no model 'no_such_net'"),
    ("timm:test_vit@missing.safetensors", "weights file not found: missing.safetensors"),
    ("torchvision:resnet19", "torchvision has no model 'resnet19'"),
    ("torchvision:resnet18@missing.pth", "weights file not found"),
    ("hf:./no/such/folder", "no such folder"),
])
def test_names_from_the_cli_fail_in_one_line(folder, tmp_path, ref, message):
    root, _ = folder
    result = run("certify", "--model", ref, "--sigma", 0.25, "--dataset", "imagefolder", "--data-root",
                 root / "images", "--device", "cpu", "--output", tmp_path / "r.jsonl")
    assert message in error_line(result)


def test_named_classifier_must_fit_the_data(folder, tmp_path):
    root, _ = folder
    config = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32, num_labels=5)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit5")
    result = run("certify", "--model", f"hf:{tmp_path / 'vit5'}", "--sigma", 0.25, "--dataset", "imagefolder",
                 "--data-root", root / "images", "--device", "cpu", "--output", tmp_path / "r.jsonl")
    assert "5 labels but the data set has 3" in error_line(result)


def test_adm_denoiser_registered():
    from art_some.plugins import registered

    assert {"adm", "tiny_adm"} <= set(registered("denoisers"))
    with pytest.raises(ValueError, match="needs path="):
        create_denoiser("adm")
