"""The runs package as a library: run_certify against the command line, the merge of shards, the loader."""
import json

import pytest
from click.testing import CliRunner

from art_some.cli import cli
from art_some.runs.certify import CertifyConfig, run_certify
from art_some.runs.records import read_header, read_jsonl

SETTINGS = dict(model="digits_cnn", sigma=0.5, n0=20, n=60, max_inputs=4, seed=3, device="cpu", batch_size=200)


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_run_certify_writes_the_records_of_the_command_line(tmp_path):
    records = run_certify(CertifyConfig(**SETTINGS, output=str(tmp_path / "lib.jsonl")), progress=False)
    args = ["certify", "--output", str(tmp_path / "cli.jsonl")]
    for key, value in SETTINGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert [r["idx"] for r in records] == [0, 1, 2, 3]
    assert without_seconds(records) == without_seconds(read_jsonl(tmp_path / "cli.jsonl"))
    assert read_header(tmp_path / "lib.jsonl") == read_header(tmp_path / "cli.jsonl")
    assert not (tmp_path / "cli.config.yaml").exists()  # written only for runs started from a config file


def test_run_certify_checks_its_modes_before_writing(tmp_path):
    config = CertifyConfig(**SETTINGS, output=str(tmp_path / "r.jsonl"), radii=[0.25], sequential=True)
    with pytest.raises(ValueError, match="not both"):
        run_certify(config, progress=False)
    with pytest.raises(ValueError, match="--tolerance is the radius mode's"):
        run_certify(CertifyConfig(**SETTINGS, output=str(tmp_path / "r.jsonl"), tolerance=0.1), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_sharded_library_runs_merge_into_the_whole_run(tmp_path):
    from art_some.runs.shards import merge_records

    whole = run_certify(CertifyConfig(**SETTINGS, output=str(tmp_path / "all.jsonl")), progress=False)
    parts = [tmp_path / f"s{i}.jsonl" for i in range(2)]
    for i, path in enumerate(parts):
        run_certify(CertifyConfig(**SETTINGS, output=str(path), shard=(i, 2)), progress=False)
    merged = merge_records(parts, tmp_path / "merged.jsonl")
    assert without_seconds(merged) == without_seconds(whole)
    assert read_header(tmp_path / "merged.jsonl")["merged_from"] == 2


def test_the_loader_resolves_names_and_checkpoints(tmp_path):
    from art_some.models import DigitsCNN, save_checkpoint
    from art_some.runs.loader import default_estimator, load_model

    model, meta = load_model("digits_cnn", num_classes=10)
    assert isinstance(model, DigitsCNN) and meta == {} and default_estimator(model) == "smoothed"
    assert default_estimator(load_model("some_digits_cnn", num_classes=10)[0]) == "some"
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, "digits_cnn", {"num_classes": 10}, sigma=0.25, estimator="smoothed")
    loaded, meta = load_model(path)
    assert meta["sigma"] == 0.25 and default_estimator(loaded, meta) == "smoothed"
    with pytest.raises(ValueError, match="neither a checkpoint file nor a registered model"):
        load_model("no_such_model")


def test_checkpoint_metadata_written_by_train_is_read_by_certify(tmp_path):
    from art_some.runs.checkpoints import check_dataset, recorded_options, training_meta

    info = {"num_classes": 10, "input_shape": (1, 8, 8)}
    meta = training_meta(sigma=0.5, dataset="digits", info=info, estimator="denoised_multiscale", method="x",
                         epoch=1, trainer_kwargs={},
                         estimator_options={"denoiser": {"name": "diffusion", "path": "denoiser"}, "sigmas": [0.5]})
    check_dataset(json.loads(json.dumps(meta)), info, "digits")
    with pytest.raises(ValueError, match="num_classes 10 but dataset 'cifar10' has 100"):
        check_dataset(meta, {"num_classes": 100, "input_shape": (1, 8, 8)}, "cifar10")
    options = recorded_options(meta, tmp_path / "model.safetensors", sigma_given=True)
    assert options == {"denoiser": {"name": "diffusion", "path": str(tmp_path / "denoiser")}}


def test_a_tsv_output_is_refused_before_any_file_is_written(tmp_path):
    # Cohen's scripts name their output .tsv; art-some's --output is the JSONL, its TSV goes beside it.
    from tests.runs.test_runner import CERTIFY, _checkpoint, _cli

    model = _checkpoint(tmp_path)
    result = _cli("certify", "--model", model, *CERTIFY, "--output", tmp_path / "run.tsv")
    assert result.exit_code == 2 and "give " in result.output and "run.jsonl" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
