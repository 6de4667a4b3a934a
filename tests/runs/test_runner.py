"""The batched runner: many inputs per engine call, records identical to one input per call (noise keyed by index)."""
import numpy as np
import torch

from art_some.data import digits
from art_some.evaluation import certify_dataset
from art_some.evaluation.runner import inputs_per_call
from art_some.models import DigitsCNN
from art_some.runs.records import read_jsonl, records_from_result
from tests.conftest import make_classifier


def test_small_n_packs_inputs_into_one_call_and_large_n_certifies_one_at_a_time():
    clf = make_classifier(DigitsCNN(), (1, 8, 8), 10, sample_size=20, noise_batch_size=1000)
    assert inputs_per_call(clf, n=100, n0=None, batch_size=None) == 10
    assert inputs_per_call(clf, n=100_000, n0=None, batch_size=None) == 1
    assert inputs_per_call(clf, n=50, n0=200, batch_size=400) == 2


def test_batched_records_equal_one_input_per_call_and_resume_exactly(tmp_path, monkeypatch):
    torch.manual_seed(0)
    clf = make_classifier(DigitsCNN(), (1, 8, 8), 10, sample_size=20, noise_batch_size=300, scale=0.25)
    data, _ = digits(split="test")
    indices = list(range(0, 40, 3))
    calls = []
    certify = type(clf).certify_detailed

    def counting(self, x, *args, **kwargs):
        calls.append(len(x))
        return certify(self, x, *args, **kwargs)

    monkeypatch.setattr(type(clf), "certify_detailed", counting)
    records = certify_dataset(clf, data, indices[:6], tmp_path / "r.jsonl", n=50, progress=False)
    records = certify_dataset(clf, data, indices, tmp_path / "r.jsonl", n=50, progress=False)  # resumes
    assert max(calls) == 6 and len(calls) < len(indices)  # 300 // 50 inputs per call
    monkeypatch.undo()
    for record in read_jsonl(tmp_path / "r.jsonl"):
        i = record["idx"]
        x, label = data[i]
        alone = records_from_result(clf.certify_detailed(np.asarray(x, np.float32)[None], n=50, indices=[i]),
                                    [int(label)], [i], "smoothed")[0]
        assert {k: v for k, v in record.items() if k not in ("seconds", "input_sha256")} == \
            {k: v for k, v in alone.items() if k != "seconds"}
    assert [r["idx"] for r in records] == indices


def _sharded(tmp_path, clf, data, indices, k, n=40):
    paths = [tmp_path / f"shard{i}.jsonl" for i in range(k)]
    for i, path in enumerate(paths):
        certify_dataset(clf, data, indices, path, n=n, progress=False, shard=(i, k))
    return paths


def test_a_merged_sharded_run_equals_the_single_process_run_and_merge_checks_everything(tmp_path):
    import pytest

    from art_some.runs.records import read_header
    from art_some.runs.shards import merge_records

    torch.manual_seed(0)
    clf = make_classifier(DigitsCNN(), (1, 8, 8), 10, sample_size=20, noise_batch_size=200, scale=0.25)
    data, _ = digits(split="test")
    indices = list(range(0, 30, 2))
    single = certify_dataset(clf, data, indices, tmp_path / "single.jsonl", n=40, progress=False)
    paths = _sharded(tmp_path, clf, data, indices, 3)
    assert [len(read_jsonl(p)) for p in paths] == [5, 5, 5]
    merged = merge_records(paths, tmp_path / "merged.jsonl")

    def strip(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert strip(merged) == strip(single) == strip(read_jsonl(tmp_path / "merged.jsonl"))
    assert read_header(tmp_path / "merged.jsonl")["merged_from"] == 3
    assert (tmp_path / "merged.tsv").is_file()
    # Refusals, each naming the file or the field.
    with pytest.raises(ValueError, match="missing"):
        merge_records(paths[:2], tmp_path / "m2.jsonl")
    with pytest.raises(ValueError, match="given twice"):
        merge_records([paths[0], paths[0], paths[1]], tmp_path / "m3.jsonl")
    with pytest.raises(ValueError, match="exists"):
        merge_records(paths, tmp_path / "merged.jsonl")
    with pytest.raises(ValueError, match="not the record file of a shard"):
        merge_records([tmp_path / "single.jsonl"], tmp_path / "m4.jsonl")
    other = make_classifier(DigitsCNN(), (1, 8, 8), 10, sample_size=20, noise_batch_size=200, scale=0.5)
    other.model.load_state_dict(clf.model.state_dict())
    odd = tmp_path / "odd"
    odd.mkdir()
    certify_dataset(other, data, indices, odd / "shard1.jsonl", n=40, progress=False, shard=(1, 3))
    with pytest.raises(ValueError, match=r"shard1.jsonl is not a shard of the same run .*: sigma 0.5 there, 0.25 in"):
        merge_records([paths[0], odd / "shard1.jsonl", paths[2]], tmp_path / "m5.jsonl")
    other_list = tmp_path / "other_list"
    other_list.mkdir()
    certify_dataset(clf, data, indices[:9], other_list / "p.jsonl", n=40, progress=False, shard=(2, 3))
    with pytest.raises(ValueError, match="p.jsonl is not a shard of the same run .*plan.count 9 there, 15 in"):
        merge_records([paths[0], paths[1], other_list / "p.jsonl"], tmp_path / "m6.jsonl")
    unfinished = tmp_path / "unfinished.jsonl"  # a shard killed before its last input
    unfinished.write_text("".join(paths[2].read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match="unfinished.jsonl holds 4 of its shard's 5 inputs: resume that shard"):
        merge_records([paths[0], paths[1], unfinished], tmp_path / "m7.jsonl")
    with pytest.raises(ValueError, match="I/K"):
        certify_dataset(clf, data, indices, tmp_path / "bad.jsonl", n=40, progress=False, shard=(3, 3))


# The command line: --shard I/K with art-some merge, and torchrun ----------------------------------------------------
def _cli(*args):
    from click.testing import CliRunner

    from art_some.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def _checkpoint(tmp_path):
    from art_some.models import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, DigitsCNN(), "digits_cnn", {"num_classes": 10}, sigma=0.25, dataset="digits",
                    num_classes=10, input_shape=[1, 8, 8])
    return path


CERTIFY = ["--n0", 20, "--n", 60, "--skip", 12, "--device", "cpu", "--batch-size", 300]


def _torchrun(*args):
    """``art-some ARGS`` in two gloo processes under torchrun, one thread each."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    # "--" ends torchrun's own options (its parser would read --n as an abbreviation of --nnodes).
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "art_some.cli", "--", *map(str, args)]
    return subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)


def _without_timings(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_shards_from_the_command_line_merge_into_the_single_process_records(tmp_path):
    model = _checkpoint(tmp_path)
    assert _cli("certify", "--model", model, *CERTIFY, "--output", tmp_path / "single.jsonl").exit_code == 0
    for i in range(3):
        result = _cli("certify", "--model", model, *CERTIFY, "--shard", f"{i}/3", "--output", tmp_path / f"s{i}.jsonl")
        assert result.exit_code == 0 and "art-some merge" in result.output, result.output
    result = _cli("merge", *(tmp_path / f"s{i}.jsonl" for i in range(3)), "--output", tmp_path / "merged.jsonl")
    assert result.exit_code == 0, result.output
    assert _without_timings(read_jsonl(tmp_path / "merged.jsonl")) == _without_timings(
        read_jsonl(tmp_path / "single.jsonl"))
    result = _cli("merge", tmp_path / "s0.jsonl", tmp_path / "s2.jsonl", "--output", tmp_path / "m2.jsonl")
    assert result.exit_code == 2 and "shard(s) 1/3 missing" in result.output
    report = _cli("report", tmp_path / "s1.jsonl", tmp_path / "merged.jsonl").output  # the provenance, shard included
    assert "run: shard 1/3 of 30 inputs" in report and "merged from 3 shards" in report
    assert "precision fp32" in report and "weights sha256" in report and "data digits test" in report
    result = _cli("certify", "--model", model, *CERTIFY, "--shard", "3/3", "--output", tmp_path / "bad.jsonl")
    assert result.exit_code == 2 and "--shard must look like I/K" in result.output
    assert not (tmp_path / "bad.jsonl").exists()


def test_torchrun_certifies_a_shard_per_rank_and_rank_0_merges_the_single_process_records(tmp_path):
    model = _checkpoint(tmp_path)
    assert _cli("certify", "--model", model, *CERTIFY, "--output", tmp_path / "single.jsonl").exit_code == 0
    proc = _torchrun("certify", "--model", model, *CERTIFY, "--output", tmp_path / "run.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ACR") == 1  # only rank 0 reports
    assert (tmp_path / "run.shard0of2.jsonl").is_file() and (tmp_path / "run.shard1of2.jsonl").is_file()
    assert _without_timings(read_jsonl(tmp_path / "run.jsonl")) == _without_timings(
        read_jsonl(tmp_path / "single.jsonl"))
    again = _torchrun("certify", "--model", model, *CERTIFY, "--output", tmp_path / "run.jsonl")  # done: read back
    assert again.returncode == 0 and again.stdout.count("ACR") == 1, again.stderr[-3000:]


# Speed options of the vote function --------------------------------------------------------------------------------
def test_bf16_fp16_channels_last_and_compile_vote_on_cpu_and_records_say_which_precision_voted():
    import pytest

    data, _ = digits(split="test")
    x = np.stack([np.asarray(data[i][0], np.float32) for i in range(6)])
    torch.manual_seed(0)
    model = DigitsCNN()
    results = {}
    for options in ({}, {"precision": "bf16"}, {"precision": "fp16"}, {"channels_last": True}, {"compile": True}):
        clf = make_classifier(model, (1, 8, 8), 10, sample_size=20, scale=0.25, **options)
        results[str(options)] = clf.certify_detailed(x, n=200)
        assert results[str(options)].extra["precision"] == options.get("precision", "fp32")
    fp32 = results["{}"]
    np.testing.assert_array_equal(results["{'channels_last': True}"].counts_estimation, fp32.counts_estimation)
    # The compiled network may round differently (fused kernels), so a rare vote near a tie may move.
    moved = np.abs(results["{'compile': True}"].counts_estimation - fp32.counts_estimation).sum() / 2
    assert moved <= 0.01 * fp32.counts_estimation.sum()
    for key in ("{'precision': 'bf16'}", "{'precision': 'fp16'}"):  # another classifier, but close to fp32's
        agree = (results[key].counts_estimation.argmax(1) == fp32.counts_estimation.argmax(1)).mean()
        assert agree >= 0.8 and results[key].counts_estimation.sum() == fp32.counts_estimation.sum()
    with pytest.raises(ValueError, match="precision must be one of 'fp32', 'bf16', 'fp16'"):
        make_classifier(model, (1, 8, 8), 10, precision="int8")
    with pytest.raises(ValueError, match="compile must be True or False"):
        make_classifier(model, (1, 8, 8), 10, compile="yes")


def test_compile_runs_the_votes_compiled_and_leaves_gradients_eager():
    data, _ = digits(split="test")
    x = np.stack([np.asarray(data[i][0], np.float32) for i in range(2)])
    torch.manual_seed(0)
    clf = make_classifier(DigitsCNN(), (1, 8, 8), 10, sample_size=20, scale=0.25, compile=True)
    clf.certify_detailed(x, n=100)
    compiled = [pair[1] for pair in clf._compiled.values()]
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "OptimizedModule"
    grad = clf.loss_gradient(x, np.array([0, 1]))  # outside inference mode: the eager network
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0



def test_the_command_line_speed_options_reach_the_estimator_and_the_header(tmp_path):
    from art_some.runs.records import read_header

    model = _checkpoint(tmp_path)
    result = _cli("certify", "--model", model, *CERTIFY, "--precision", "bf16", "--channels-last", "--compile",
                  "--output", tmp_path / "bf16.jsonl")
    assert result.exit_code == 0, result.output
    header = read_header(tmp_path / "bf16.jsonl")
    assert header["estimator_params"]["precision"] == "bf16" and header["estimator_params"]["channels_last"] is True
    assert header["estimator_params"]["compile"] is True
    assert all(r["precision"] == "bf16" for r in read_jsonl(tmp_path / "bf16.jsonl"))
    # Resuming with another precision is another run.
    result = _cli("certify", "--model", model, *CERTIFY, "--output", tmp_path / "bf16.jsonl")
    assert result.exit_code == 2 and "precision" in result.output


# Sharded audits (art-some evaluate) --------------------------------------------------------------------------------
EVALUATE = ["--n0", 20, "--n", 60, "--max-inputs", 6, "--skip", 7, "--device", "cpu", "--attack", "pgd",
            "--attack", "deepfool", "--eps", "0.5,1", "--budget", "pgd.max_iter=3", "--budget", "deepfool.max_iter=3",
            "--verify-n", 60, "--chunk", 2]


def _audit_records(folder):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(folder / "audit.jsonl")]


def test_audit_shards_merge_into_the_single_process_audit_and_merge_checks_them(tmp_path):
    import json

    model = _checkpoint(tmp_path)
    result = _cli("evaluate", "--model", model, *EVALUATE, "--output-dir", tmp_path / "single")
    assert result.exit_code == 0, result.output
    for i in range(2):  # chunks of 2 inputs: shard 0 audits inputs 0, 1, 4, 5 and shard 1 inputs 2, 3
        result = _cli("evaluate", "--model", model, *EVALUATE, "--shard", f"{i}/2", "--output-dir", tmp_path / f"a{i}")
        assert result.exit_code == 0 and "art-some merge" in result.output, result.output
    assert [len(_audit_records(tmp_path / f"a{i}")) for i in range(2)] == [4, 2]
    result = _cli("merge", tmp_path / "a0", tmp_path / "a1", "--output", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    assert _audit_records(tmp_path / "merged") == _audit_records(tmp_path / "single")
    single = json.loads((tmp_path / "single" / "audit.json").read_text())
    merged = json.loads((tmp_path / "merged" / "audit.json").read_text())
    assert merged["curves"] == single["curves"] and (tmp_path / "merged" / "audit.png").is_file()
    result = _cli("merge", tmp_path / "a0", "--output", tmp_path / "m2")
    assert result.exit_code == 2 and "shard(s) 1/2 missing" in result.output
    result = _cli("merge", tmp_path / "a0", tmp_path / "a1", "--output", tmp_path / "merged")
    assert result.exit_code == 2 and "holds an audit" in result.output
    result = _cli("merge", tmp_path / "a0", tmp_path / "single.jsonl", "--output", tmp_path / "m3")
    assert result.exit_code == 2
    # A shard resumed with other settings is refused, naming the field.
    result = _cli("evaluate", "--model", model, *EVALUATE, "--verify-n", 70, "--shard", "1/2",
                  "--output-dir", tmp_path / "a1")
    assert result.exit_code == 2 and "verify_n" in result.output


def test_torchrun_audits_a_shard_per_rank_and_rank_0_merges_the_single_process_audit(tmp_path):
    model = _checkpoint(tmp_path)
    assert _cli("evaluate", "--model", model, *EVALUATE, "--output-dir", tmp_path / "single").exit_code == 0
    args = ("evaluate", "--model", model, *EVALUATE, "--output-dir", tmp_path / "audit")
    proc = _torchrun(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("reports:") == 1  # only rank 0 reports
    assert (tmp_path / "audit.shard0of2" / "audit.jsonl").is_file()
    assert _audit_records(tmp_path / "audit") == _audit_records(tmp_path / "single")
    again = _torchrun(*args)  # everything done: the merged audit is read back
    assert again.returncode == 0 and again.stdout.count("reports:") == 1, again.stderr[-3000:]
