"""
A researcher's own data (issue 28): grayscale, resized and standardised image folders, NumPy arrays, and the check
of the model against one input before any file exists.
"""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from art_some.cli import cli
from art_some.data import digits_arrays, load_dataset
from art_some.runs.records import read_header, read_jsonl

CERTIFY = ["certify", "--model", "digits_cnn", "--sigma", "0.25", "--n0", "10", "--n", "40", "--max-inputs", "3",
           "--device", "cpu"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return result.output.strip().splitlines()[-1]


def digit_folder(root, per_class: int = 2):
    """PNGs of the first test digits, 8x8 grayscale, in one folder per class: what a user's own folder looks like."""
    x, y = digits_arrays("test")
    for label in range(10):
        folder = root / str(label)
        folder.mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(y == label)[:per_class]):
            Image.fromarray(np.round(x[i, 0] * 255).astype(np.uint8), mode="L").save(folder / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return digit_folder(tmp_path_factory.mktemp("digits_png"))


def test_imagefolder_channels_resize_and_standardisation(folder):
    rgb, info = load_dataset("imagefolder", root=folder)
    gray, gray_info = load_dataset("imagefolder", root=folder, channels=1)
    assert info["input_shape"] == (3, 8, 8) and gray_info["input_shape"] == (1, 8, 8)  # RGB stays the default
    x_rgb, x_gray = rgb[0][0], gray[0][0]
    assert torch.equal(x_rgb[0], x_rgb[2]) and torch.allclose(x_gray[0], x_rgb[0], atol=1 / 255)
    first = np.round(digits_arrays("test")[0][np.flatnonzero(digits_arrays("test")[1] == 0)[0], 0] * 255) / 255
    assert np.allclose(x_gray[0].numpy(), first, atol=1e-6)  # the PNG's pixels, in [0, 1]
    big, big_info = load_dataset("imagefolder", root=folder, channels=1, resize=(16, 12))
    assert big_info["input_shape"] == (1, 16, 12) and big[0][0].shape == (1, 16, 12)
    _, standard = load_dataset("imagefolder", root=folder, mean=(0.5,), std=(0.25, 0.5, 1.0))
    assert standard["mean"] == (0.5,) and standard["std"] == (0.25, 0.5, 1.0)
    assert gray_info["mean"] == (0.0,) and gray_info["std"] == (1.0,)


@pytest.mark.parametrize("options,message", [
    ({"channels": 2}, r"--channels must be 1 \(grayscale\) or 3 \(RGB\)"),
    ({"std": (0.0,)}, "--std for dataset 'imagefolder' must be positive"),
    ({"channels": 1, "mean": (0.1, 0.2, 0.3)}, "--mean for dataset 'imagefolder' must be one finite number or 1"),
])
def test_bad_imagefolder_options_name_the_option(folder, options, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("imagefolder", root=folder, **options)


def test_a_data_option_the_dataset_does_not_take_is_refused_before_any_file(tmp_path):
    line = error_line(run(*CERTIFY, "--channels", 1, "--output", tmp_path / "r.jsonl"))
    assert line == ("Error: --channels is not an option of dataset 'digits' (it takes no data options; imagefolder "
                    "takes --channels, --resize, --mean, --std)")
    assert not (tmp_path / "r.jsonl").exists()


def test_a_grayscale_folder_certifies_with_a_one_channel_model_and_a_mismatch_is_one_line(folder, tmp_path):
    common = ["--dataset", "imagefolder", "--data-root", folder]
    out = tmp_path / "r.jsonl"
    result = run(*CERTIFY, *common, "--channels", 1, "--output", out)
    assert result.exit_code == 0, result.output
    assert [r["idx"] for r in read_jsonl(out)] == [0, 1, 2] and read_header(out)["data_options"] == {"channels": 1}
    for command in (CERTIFY, ["evaluate", *CERTIFY[1:]]):
        target = ["--output", tmp_path / "rgb.jsonl"] if command is CERTIFY else ["--output-dir", tmp_path / "audit"]
        line = error_line(run(*command, *common, *target))
        assert line == ("Error: the model expects 1-channel inputs but --dataset imagefolder gives 3x8x8 images; "
                        "pass --channels 1")
    train = ["train", "--method", "gaussian", "--model", "digits_cnn", "--epochs", 1, "--device", "cpu"]
    line = error_line(run(*train, *common, "--output-dir", tmp_path / "trained"))
    assert line.endswith("the model expects 1-channel inputs but --dataset imagefolder gives 3x8x8 images; pass "
                         "--channels 1")
    assert not (tmp_path / "rgb.jsonl").exists() and not (tmp_path / "audit").exists()
    assert not (tmp_path / "trained").exists()


def test_a_model_for_other_image_sizes_fails_in_one_line_naming_the_shapes(folder, tmp_path):
    line = error_line(run(*CERTIFY, "--dataset", "imagefolder", "--data-root", folder, "--channels", 1,
                          "--resize", 12, "--output", tmp_path / "r.jsonl"))
    assert line.startswith("Error: the model fails on one input of --dataset imagefolder (1x12x12 images, 10 "
                           "classes): RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert line.endswith("; resize the images (--resize)") and not (tmp_path / "r.jsonl").exists()


def test_a_trained_checkpoint_keeps_its_standardisation_and_certify_asks_for_it(folder, tmp_path):
    common = ["--dataset", "imagefolder", "--data-root", folder, "--channels", 1]
    result = run("train", "--method", "gaussian", "--model", "digits_cnn", "--epochs", 1, "--device", "cpu",
                 *common, "--mean", 0.5, "--std", 0.25, "--output-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    model = tmp_path / "run" / "model.safetensors"
    base = ["certify", "--model", model, "--n0", 10, "--n", 40, "--max-inputs", 2, "--device", "cpu", *common]
    line = error_line(run(*base, "--output", tmp_path / "r.jsonl"))
    assert line == ("Error: --model checkpoint has mean [0.5] but dataset 'imagefolder' has [0.0]; pass --mean 0.5")
    result = run(*base, "--mean", 0.5, "--std", 0.25, "--output", tmp_path / "r.jsonl")
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tmp_path / "r.jsonl")) == 2


# ---------------------------------------------------------------------------------------------------------------
# NumPy arrays
# ---------------------------------------------------------------------------------------------------------------
def _arrays():
    x, y = digits_arrays("test")
    return np.round(x[:12] * 255).astype(np.uint8), y[:12]


def test_numpy_npz_and_npy_folders_in_every_layout_give_the_same_inputs(tmp_path):
    x, y = _arrays()
    np.savez(tmp_path / "nchw.npz", x=x, y=y)
    np.savez(tmp_path / "nhwc.npz", x=x.transpose(0, 2, 3, 1).astype(np.float32) / 255, y=y.astype(np.int32))
    np.savez(tmp_path / "nhw.npz", x_test=x[:, 0], y_test=y, x_train=x[:4, 0], y_train=y[:4], num_classes=np.int64(10))
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "x.npy", x)
    np.save(tmp_path / "npy" / "y.npy", y)
    expected = x.astype(np.float32) / 255
    for root in ("nchw.npz", "nhwc.npz", "nhw.npz", "npy"):
        data, info = load_dataset("numpy", root=tmp_path / root)
        assert info["input_shape"] == (1, 8, 8) and info["num_classes"] == 10, root
        got = np.stack([data[i][0].numpy() for i in range(len(data))])
        assert np.allclose(got, expected, atol=1e-6) and [int(data[i][1]) for i in range(len(data))] == list(y)
    train, _ = load_dataset("numpy", root=tmp_path / "nhw.npz", split="train")
    assert len(train) == 4


@pytest.mark.parametrize("arrays,message", [
    ({"inputs": "x", "y": "y"}, r"has no inputs and labels for split 'test': it needs arrays x and y, or x_test and "
                                r"y_test \(it has inputs, y\)"),
    ({"x": "x5d", "y": "y"}, r"\['x'\] has shape \(12, 1, 1, 8, 8\); inputs must be \(N, C, H, W\)"),
    ({"x": "int32", "y": "y"}, r"\['x'\] has dtype int32; inputs must be uint8 in 0-255 or floats in \[0, 1\]"),
    ({"x": "nan", "y": "y"}, r"\['x'\] holds 1 NaN or infinite values"),
    ({"x": "255f", "y": "y"}, r"\['x'\] holds values in \[0, 255\]; inputs must be uint8 in 0-255 or floats in "
                              r"\[0, 1\] \(divide 0-255 floats by 255\)"),
    ({"x": "x", "y": "yfloat"}, r"\['y'\] has dtype float64; labels must be integers"),
    ({"x": "x", "y": "yshort"}, r"\['y'\] has shape \(11,\); labels must be one integer per input, shape \(12,\)"),
    ({"x": "x", "y": "y", "num_classes": "three"}, r"\['y'\] holds labels 3, 6, 7, 8, 9; they must be in "
                                                   r"\[0, 2\] \(3 classes"),
    ({"x": "x", "y": "yneg"}, r"\['y'\] holds labels -1; they must be in \[0, 9\]"),
])
def test_bad_numpy_arrays_are_refused_in_one_line_naming_the_array(tmp_path, arrays, message):
    x, y = _arrays()
    made = {"x": x, "y": y, "x5d": x[:, None], "int32": x.astype(np.int32), "255f": x.astype(np.float32),
            "yfloat": y.astype(np.float64), "yshort": y[:-1], "three": np.int64(3), "yneg": np.r_[-1, y[1:]]}
    made["nan"] = x.astype(np.float32) / 255
    made["nan"][0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "d.npz", **{key: made[value] for key, value in arrays.items()})
    with pytest.raises(ValueError, match=message) as caught:
        load_dataset("numpy", root=tmp_path / "d.npz")
    assert "\n" not in str(caught.value)


def test_numpy_roots_that_are_no_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="dataset 'numpy' needs --data-root: a .npz file or a folder of .npy"):
        load_dataset("numpy")
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"must be a .npz file or a folder of .npy files"):
        load_dataset("numpy", root=tmp_path / "d.csv")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(ValueError, match=r"obj.npz\['x'\] is not a readable array of numbers"):
        load_dataset("numpy", root=tmp_path / "obj.npz")


def test_a_numpy_dataset_certifies_end_to_end_from_the_cli(tmp_path):
    x, y = digits_arrays("test")
    np.savez(tmp_path / "data.npz", x=x[:12], y=y[:12])  # float32 in [0, 1]: the embedded digits themselves
    out, digits_out = tmp_path / "r.jsonl", tmp_path / "digits.jsonl"
    result = run(*CERTIFY, "--dataset", "numpy", "--data-root", tmp_path / "data.npz", "--output", out)
    assert result.exit_code == 0, result.output
    assert read_header(out)["dataset"] == "numpy" and read_header(out)["source"]["data_root"].endswith("data.npz")
    assert run(*CERTIFY, "--output", digits_out).exit_code == 0
    # The same inputs, model and noise: the same records as the embedded digits, field for field.
    mine = [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(out)]
    theirs = [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(digits_out)]
    assert len(mine) == 3 and mine == theirs
