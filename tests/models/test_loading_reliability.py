"""Corrupt, truncated or ill-described checkpoints and denoisers are refused with one error naming the file."""
import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

from art_some.core.errors import NonFiniteError
from art_some.models import DigitsCNN, create_denoiser, load_checkpoint, save_checkpoint
from art_some.models.diffusion import DiffusionDenoiser, tiny_unet


# Checkpoints ------------------------------------------------------------------------------------------------------
def with_metadata(path, info):
    """A DigitsCNN checkpoint whose art-some metadata is ``info`` (a string is written as is, not as JSON)."""
    torch.manual_seed(0)
    save_model(DigitsCNN(), str(path), metadata={"art_some": info if isinstance(info, str) else json.dumps(info)})
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path, value):
    torch.manual_seed(0)
    state = DigitsCNN().state_dict()
    state["features.0.weight"].view(-1)[:4] = value
    state["classifier.3.bias"][0] = value
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path), metadata={"art_some": json.dumps({"model": "digits_cnn"})})
    with pytest.raises(NonFiniteError, match="nan.safetensors.*features.0.weight.*4 .*classifier.3.bias") as caught:
        load_checkpoint(path)
    assert isinstance(caught.value, ValueError)


def test_a_torch_checkpoint_with_nan_weights_is_refused(tmp_path):
    model = DigitsCNN()
    state = model.state_dict()
    state["features.0.bias"][1] = float("nan")
    torch.save({"state_dict": state, "meta": {"model": "digits_cnn"}}, tmp_path / "nan.pt")
    with pytest.raises(NonFiniteError, match=r"nan\.pt.*features\.0\.bias \(1 NaN\)"):
        load_checkpoint(tmp_path / "nan.pt")


@pytest.mark.parametrize("info, match", [
    ({"model": "digits_cnn", "model_kwargs": {"num_clases": 10}}, "'model_kwargs'.*unknown argument.*num_clases"),
    ({"model": "digits_cnn", "model_kwargs": {"num_classes": "ten"}}, "'model_kwargs'.*num_classes='ten'.*int"),
    ({"model": "digits_cnn", "model_kwargs": {"num_classes": 10.5}}, "'model_kwargs'.*cannot build model"),
    ({"model": "digits_cnn", "model_kwargs": [10]}, "'model_kwargs' must be a JSON object"),
    ({"model": "no_such_net"}, "field 'model' is 'no_such_net', not a registered model; registered: .*digits_cnn"),
    ({"model_kwargs": {}}, "field 'model' is None"),
    ([1, 2], "metadata must be a JSON object"),
    ("{model: digits", "metadata field 'art_some' is not valid JSON"),
])
def test_bad_metadata_names_the_file_and_the_field(tmp_path, info, match):
    path = with_metadata(tmp_path / "m.safetensors", info)
    with pytest.raises(ValueError, match=match) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value) and type(caught.value) is ValueError


def test_a_torch_checkpoint_without_the_layout_is_refused(tmp_path):
    torch.save({"weights": {}}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"m\.pt has no art-some metadata.*'state_dict' and 'meta'"):
        load_checkpoint(tmp_path / "m.pt")
    torch.save({"state_dict": {}, "meta": ["digits_cnn"]}, tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: its metadata must be a JSON object"):
        load_checkpoint(tmp_path / "list.pt")


def test_metadata_without_the_art_some_field(tmp_path):
    save_model(DigitsCNN(), str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="plain.safetensors has no art-some metadata.*save_checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")


@pytest.mark.parametrize("keep", [0.5, 0.999, 30])
def test_a_truncated_checkpoint_names_the_file(tmp_path, keep):
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, DigitsCNN(), "digits_cnn", {"num_classes": 10})
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: int(keep * len(data)) if keep < 1 else keep])
    with pytest.raises(ValueError, match="cut.safetensors is corrupt"):
        load_checkpoint(cut)


def test_a_truncated_torch_checkpoint_names_the_file(tmp_path):
    torch.save({"state_dict": DigitsCNN().state_dict(), "meta": {"model": "digits_cnn"}}, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"m\.pt is corrupt"):
        load_checkpoint(tmp_path / "m.pt")


def test_the_command_line_refuses_a_nan_checkpoint_in_one_line(tmp_path):
    from click.testing import CliRunner

    from art_some.cli import cli

    state = DigitsCNN().state_dict()
    state["features.0.weight"].view(-1)[:4] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path), metadata={"art_some": json.dumps({"model": "digits_cnn", "sigma": 0.25})})
    result = CliRunner().invoke(cli, ["certify", "--model", str(path), "--output", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "non-finite weights in features.0.weight" in result.output
    assert not (tmp_path / "o.jsonl").exists()


# Denoisers --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_unet(tmp_path_factory):
    """A tiny UNet saved as a pipeline folder, a bare folder and a safetensors file; returns (folder, unet)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    root = tmp_path_factory.mktemp("unet")
    torch.manual_seed(0)
    unet = tiny_unet(widths=(8, 16)).eval()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(root / "pipe")
    unet.save_pretrained(root / "bare")
    save_file(unet.state_dict(), str(root / "unet.safetensors"))
    return root, unet


def broken_copy(saved_unet, tmp_path, spoil, source="bare"):
    folder = tmp_path / source
    shutil.copytree(saved_unet[0] / source, folder)
    spoil(folder)
    return folder


def edit_weights(file, change):
    state = load_file(str(file))
    change(state)
    save_file(state, str(file))


WEIGHTS = "diffusion_pytorch_model.safetensors"
FOLDER_CASES = {
    "config not JSON": (lambda f: (f / "config.json").write_text("{oops"), r"config\.json is not valid JSON"),
    "config a list": (lambda f: (f / "config.json").write_text("[1]"), r"config\.json must hold a JSON object"),
    "config of another class": (
        lambda f: (f / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"})),
        r"config\.json describes model class 'AutoencoderKL', not a UNet2DModel"),
    "config that builds no UNet": (
        lambda f: (f / "config.json").write_text(json.dumps({"norm_num_groups": 3, "block_out_channels": [8, 16]})),
        "cannot load the UNet"),
    "config missing": (lambda f: (f / "config.json").unlink(), "neither a diffusers pipeline folder.*config.json"),
    "weights missing": (lambda f: (f / WEIGHTS).unlink(), "has no weights: expected diffusion_pytorch_model"),
    "weights truncated": (lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:5000]),
                          "safetensors is truncated or not a safetensors file"),
    "a tensor missing": (lambda f: edit_weights(f / WEIGHTS, lambda s: s.pop("conv_in.bias")),
                         r"not a checkpoint of this UNet: 1 UNet tensor\(s\) missing \(conv_in.bias\)"),
    "a tensor too many": (lambda f: edit_weights(f / WEIGHTS, lambda s: s.update(extra=torch.zeros(2))),
                          r"1 tensor\(s\) the UNet does not have \(extra\)"),
    "weights of another UNet": (lambda f: save_file(tiny_unet(widths=(16, 32)).state_dict(), str(f / WEIGHTS)),
                                "cannot load the UNet .*size mismatch for conv_in.weight"),
}


@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_a_corrupt_diffusers_folder_names_the_path(saved_unet, tmp_path, case):
    spoil, match = FOLDER_CASES[case]
    folder = broken_copy(saved_unet, tmp_path, spoil)
    with pytest.raises(ValueError, match=match) as caught:
        create_denoiser("diffusion", path=str(folder))
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)


def test_a_pipeline_folder_with_broken_parts_names_the_part(saved_unet, tmp_path):
    folder = broken_copy(saved_unet, tmp_path, lambda f: (f / "unet" / WEIGHTS).unlink(), source="pipe")
    with pytest.raises(ValueError, match=r"pipe/unet has no weights"):
        DiffusionDenoiser.from_pretrained(folder)
    shutil.copy(saved_unet[0] / "pipe" / "unet" / WEIGHTS, folder / "unet" / WEIGHTS)
    (folder / "scheduler" / "scheduler_config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"scheduler_config\.json is not valid JSON"):
        DiffusionDenoiser.from_pretrained(folder)


def test_nan_denoiser_weights_are_refused(saved_unet, tmp_path):
    def poison(state):
        state["conv_in.weight"].view(-1)[:3] = float("nan")

    folder = broken_copy(saved_unet, tmp_path, lambda f: edit_weights(f / WEIGHTS, poison))
    with pytest.raises(NonFiniteError, match=r"denoiser folder .*conv_in\.weight \(3 NaN\)"):
        create_denoiser("diffusion", path=str(folder))
    shutil.copy(folder / WEIGHTS, tmp_path / "nan.safetensors")
    with pytest.raises(NonFiniteError, match=r"nan\.safetensors has non-finite weights in conv_in\.weight"):
        create_denoiser("diffusion", checkpoint=str(tmp_path / "nan.safetensors"),
                        unet_config=dict(saved_unet[1].config))


def test_a_denoiser_checkpoint_that_is_not_a_unet(saved_unet, tmp_path):
    config = dict(saved_unet[1].config)
    save_file(DigitsCNN().state_dict(), str(tmp_path / "cnn.safetensors"))
    with pytest.raises(ValueError, match=r"cnn\.safetensors is not a checkpoint of this UNet: \d+ UNet tensor"):
        create_denoiser("diffusion", checkpoint=str(tmp_path / "cnn.safetensors"), unet_config=config)
    torch.save({"epoch": 3}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match=r"junk\.pt holds no state dict"):
        create_denoiser("diffusion", checkpoint=str(tmp_path / "junk.pt"), unet_config=config)
    with pytest.raises(ValueError, match=r"unet\.safetensors does not fit this UNet \(size mismatch"):
        create_denoiser("diffusion", checkpoint=str(saved_unet[0] / "unet.safetensors"),
                        unet_config={**config, "block_out_channels": [16, 32]})


def test_a_truncated_or_missing_denoiser_checkpoint(saved_unet, tmp_path):
    config = dict(saved_unet[1].config)
    data = (saved_unet[0] / "unet.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.safetensors is truncated, corrupt"):
        create_denoiser("diffusion", checkpoint=str(tmp_path / "cut.safetensors"), unet_config=config)
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        create_denoiser("diffusion", checkpoint=str(tmp_path / "nope.safetensors"), unet_config=config)


def test_a_bad_unet_config_or_scheduler_names_it(saved_unet, tmp_path):
    checkpoint = str(saved_unet[0] / "unet.safetensors")
    (tmp_path / "config.json").write_text("{x")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        create_denoiser("diffusion", checkpoint=checkpoint, unet_config=str(tmp_path / "config.json"))
    with pytest.raises(FileNotFoundError, match="unet_config file not found"):
        create_denoiser("diffusion", checkpoint=checkpoint, unet_config=str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match="unet_config cannot build a UNet2DModel"):
        create_denoiser("diffusion", checkpoint=checkpoint, unet_config={"block_out_channels": "ab"})
    with pytest.raises(ValueError, match="scheduler must be a dict"):
        create_denoiser("diffusion", path=str(saved_unet[0] / "bare"), scheduler=[1000])
    with pytest.raises(ValueError, match="scheduler=.*not valid DDPMScheduler arguments"):
        create_denoiser("diffusion", path=str(saved_unet[0] / "bare"), scheduler={"beta_schedule": "wiggly"})
    with pytest.raises(ValueError, match="is a file: pass a diffusers folder as path="):
        create_denoiser("diffusion", path=checkpoint)


def test_loading_a_denoiser_prints_no_accelerate_notice(saved_unet, capsys, caplog):
    with caplog.at_level(logging.INFO):
        for source in ("pipe", "bare"):
            den = create_denoiser("diffusion", path=str(saved_unet[0] / source))
            with torch.no_grad():
                assert den(torch.rand(1, 1, 8, 8), 0.5).shape == (1, 1, 8, 8)
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    assert "accelerate" not in text and "unsafe serialization" not in text


def test_a_bin_only_folder_still_loads(saved_unet, tmp_path):
    def to_bin(folder):
        torch.save(load_file(str(folder / WEIGHTS)), folder / "diffusion_pytorch_model.bin")
        (folder / WEIGHTS).unlink()

    folder = broken_copy(saved_unet, tmp_path, to_bin)
    den = create_denoiser("diffusion", path=str(folder))
    z = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        reference = create_denoiser("diffusion", path=str(saved_unet[0] / "bare"))(z, 0.5)
        assert torch.allclose(den(z, 0.5), reference, atol=1e-6)
