"""Config files for certify, evaluate and train: keys are options, the command line overrides, unknown keys fail."""
import json

import pytest
import yaml
from click.testing import CliRunner

from art_some.cli import cli
from art_some.runs.records import read_header, read_jsonl


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_certify_from_a_config_file_with_an_override(tmp_path):
    out = tmp_path / "r.jsonl"
    config = write(tmp_path / "run.yaml", {"model": "digits_cnn", "sigma": 0.5, "n0": 20, "n": 50, "max-inputs": 3,
                                           "batch_size": 200, "device": "cpu", "seed": 2, "output": str(out),
                                           "radii": [0.1, 0.2]})
    result = run("certify", "--config", config, "--n", 80)
    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    assert [r["idx"] for r in records] == [0, 1, 2]
    assert all(r["n"] == 80 and r["sigma"] == 0.5 for r in records)  # the command line's n, the file's sigma
    header = read_header(out)
    assert header["n"] == 80 and header["seed"] == 2 and header["sequential"]["radii"] == [0.1, 0.2]
    resolved = yaml.safe_load((tmp_path / "r.config.yaml").read_text())
    assert resolved["n"] == 80 and resolved["sigma"] == 0.5 and resolved["radii"] == "0.1,0.2"
    assert "from the command line" in (tmp_path / "r.config.yaml").read_text().splitlines()[0]
    # The resolved configuration runs the same run again: it resumes the finished file.
    again = run("certify", "--config", tmp_path / "r.config.yaml")
    assert again.exit_code == 0, again.output
    assert read_jsonl(out) == records


def test_an_unknown_key_is_refused_by_name_before_any_file(tmp_path):
    out = tmp_path / "out"
    config = write(tmp_path / "run.yaml", {"model": "digits_cnn", "sigmaa": 0.5, "output": str(out / "r.jsonl")})
    result = run("certify", "--config", config)
    assert result.exit_code == 2
    assert "unknown key 'sigmaa'" in result.output and "sigma" in result.output and "batch_size" in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]
    for command in ("train", "evaluate"):
        result = run(command, "--config", write(tmp_path / "bad.yaml", {"output_dir": str(out), "epoch": 1}))
        assert result.exit_code == 2 and "unknown key 'epoch'" in result.output, result.output
    assert not out.exists()


def test_config_files_refuse_what_is_not_a_mapping_or_not_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    result = run("certify", "--config", tmp_path / "list.yaml")
    assert result.exit_code == 2 and "must hold a mapping" in result.output
    (tmp_path / "bad.json").write_text("{")
    result = run("certify", "--config", tmp_path / "bad.json")
    assert result.exit_code == 2 and "not valid JSON" in result.output


def test_train_from_a_config_file(tmp_path):
    out = tmp_path / "train"
    config = write(tmp_path / "train.yaml", {"method": "gaussian", "model": "digits_cnn", "epochs": 1,
                                             "device": "cpu", "output-dir": str(out), "option": {}})
    result = run("train", "--config", config, "--sigma", 0.5)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()
    resolved = yaml.safe_load((out / "train.config.yaml").read_text())
    assert resolved["sigma"] == 0.5 and resolved["epochs"] == 1 and resolved["method"] == "gaussian"


def test_evaluate_from_a_config_file(tmp_path):
    out = tmp_path / "audit"
    config = tmp_path / "audit.json"  # JSON works too; mappings for the repeatable options
    config.write_text(json.dumps({"model": "digits_cnn", "sigma": 0.25, "n0": 10, "n": 100, "verify_n": 100,
                                  "max_inputs": 2, "attack": ["deepfool"], "budget": {"deepfool": {"max_iter": 2}},
                                  "device": "cpu", "output_dir": str(out)}))
    result = run("evaluate", "--config", config)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "audit_config.json").read_text())
    assert saved["budgets"] == {"deepfool": {"max_iter": 2}} and saved["attacks"] == ["deepfool"]
    resolved = yaml.safe_load((out / "audit.config.yaml").read_text())
    assert resolved["budget"] == ["deepfool.max_iter=2"] and resolved["attack"] == ["deepfool"]


def test_keys_take_dashes_underscores_or_the_parameter_name():
    from art_some.cli import certify, evaluate
    from art_some.runs.config import option_values

    values = option_values(certify, {"max-inputs": 3, "batch_size": 10, "option": {"resize": 10}, "radii": [0, 1]})
    assert values == {"max_inputs": 3, "batch_size": 10, "options": ["resize=10"], "radii": "0,1"}
    values = option_values(evaluate, {"attacks": ["pgd"], "budget": {"pgd": {"max_iter": 5}}, "eps": [0.5]})
    assert values == {"attacks": ["pgd"], "budgets": ["pgd.max_iter=5"], "eps": "0.5"}
    with pytest.raises(ValueError, match="gives option 'attacks' twice"):
        option_values(evaluate, {"attack": ["pgd"], "attacks": ["pgd"]})
