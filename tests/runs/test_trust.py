"""
Every merged table can be trusted (issue 27): reruns under torchrun, merges that check what records say and which
data they came from, merges that never look finished when they are not, shards still being written, absurd shard
counts, files that are not ours, and refusals that leave nothing behind.
"""
import errno
import json
import os

import numpy as np
import pytest
import torch

from art_some.data import digits
from art_some.evaluation import certify_dataset
from art_some.runs.records import RecordWriter, read_header, read_jsonl, tsv_path, write_atomically
from art_some.runs.shards import merge_records
from tests.runs.test_records_reliability import CERTIFY, EVALUATE, TRAIN, estimator, files_under, one_line_error, run
from tests.runs.test_runner import _checkpoint, _torchrun

N = 40


@pytest.fixture(scope="module")
def test_data():
    return digits(split="test")


def _shards(tmp_path, data, info, indices, k=2, sigma=0.1, name="s"):
    clf = estimator(info, sigma=sigma)
    paths = [tmp_path / f"{name}{i}.jsonl" for i in range(k)]
    for i, path in enumerate(paths):
        certify_dataset(clf, data, indices, path, n=N, progress=False, shard=(i, k))
    return paths


def _edit(path, line, **changes):
    """Rewrite record ``line`` (1 = the header) of ``path`` with ``changes`` (None removes a field)."""
    lines = path.read_text().splitlines()
    record = json.loads(lines[line - 1])
    for key, value in changes.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    lines[line - 1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


# Silent wrong results -------------------------------------------------------------------------------------------
def test_a_torchrun_rerun_on_other_inputs_refuses_the_earlier_merged_run(tmp_path):
    model = _checkpoint(tmp_path)
    out = tmp_path / "run.jsonl"
    first = ["certify", "--model", model, "--n0", 10, "--n", 30, "--device", "cpu", "--max-inputs", 4]
    proc = _torchrun(*first, "--skip", 12, "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = out.read_bytes()
    for shard in tmp_path.glob("run.shard*"):
        shard.unlink()
    proc = _torchrun(*first, "--skip", 2, "--output", out)  # other inputs, the same count
    assert proc.returncode != 0 and "does not hold the merged records of this run" in proc.stderr
    assert "ACR" not in proc.stdout and out.read_bytes() == before


def test_a_torchrun_audit_rerun_on_other_inputs_refuses_the_earlier_merged_audit(tmp_path):
    model = _checkpoint(tmp_path)
    args = ["evaluate", "--model", model, "--n0", 10, "--n", 30, "--verify-n", 30, "--max-inputs", 2, "--attack",
            "deepfool", "--budget", "deepfool.max_iter=2", "--device", "cpu", "--chunk", 1]
    proc = _torchrun(*args, "--skip", 12, "--output-dir", tmp_path / "audit")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for shard in tmp_path.glob("audit.shard*"):
        for f in shard.iterdir():
            f.unlink() if f.is_file() else None
    proc = _torchrun(*args, "--skip", 2, "--output-dir", tmp_path / "audit")
    assert proc.returncode != 0 and "not this run's merged audit" in proc.stderr


@pytest.mark.parametrize("line,changes,words", [
    ("certified", {"radius": 5.0}, ["field radius", "certify"]),
    ("certified", {"radius": "nudge"}, ["field radius"]),
    ("certified", {"radius": -0.1}, ["field radius", "finite number >= 0"]),
    ("certified", {"pA_lower": 0.999, "radius": 0.309}, ["field pA_lower", "votes"]),
    ("certified", {"predict": "other"}, ["field correct"]),
    (2, {"sigma": 1.0}, ["field sigma", "0.1"]),
    (2, {"n": 100_000}, ["field n", "header says 40"]),
    (2, {"radius": float("nan")}, ["field radius", "nan"]),
    (2, {"radius": float("inf")}, ["field radius", "inf"]),
    (2, {"idx": "7"}, ["field idx", "not an integer"]),
    (2, {"label": None}, ["field label", "None"]),
])
def test_merge_and_report_refuse_records_that_contradict_themselves_or_their_header(tmp_path, test_data, line,
                                                                                    changes, words):
    data, info = test_data
    paths = _shards(tmp_path, data, info, list(range(0, 40, 5)))
    if line == "certified":  # a record with a certificate, so that its radius and correct can be checked
        records = read_jsonl(paths[0])
        line = 2 + next(j for j, r in enumerate(records) if r["predict"] >= 0 and r["radius"] > 0)
        record = records[line - 2]
        if changes.get("radius") == "nudge":
            changes = {"radius": record["radius"] * (1 - 1e-6)}
        if changes.get("predict") == "other":  # another class, correct left as it was
            changes = {"predict": record["label"] if record["predict"] != record["label"] else
                       (record["label"] + 1) % 10}
    _edit(paths[0], line, **changes)
    with pytest.raises(ValueError) as err:
        merge_records(paths, tmp_path / "merged.jsonl")
    message = str(err.value)
    assert f"{paths[0]}: line {line}" in message and all(w in message for w in words), message
    assert not (tmp_path / "merged.jsonl").exists() and not tsv_path(tmp_path / "merged.jsonl").exists()
    assert not list(tmp_path.glob(".merged*"))  # no staged leftovers
    one_line_error(run("report", paths[0]), f"line {line}")


def test_merge_recomputes_what_the_records_say_and_accepts_untouched_records(tmp_path, test_data):
    data, info = test_data
    paths = _shards(tmp_path, data, info, list(range(0, 40, 5)))
    merged = merge_records(paths, tmp_path / "merged.jsonl")
    assert any(r["radius"] > 0 for r in merged)  # the radius check had certificates to check
    assert read_header(tmp_path / "merged.jsonl")["plan"]["count"] == 8  # the index list stays in the merge
    assert run("report", tmp_path / "merged.jsonl").exit_code == 0


def test_shards_of_two_copies_of_a_data_set_do_not_merge_and_resume_checks_every_input(tmp_path, test_data):
    data, info = test_data
    indices = list(range(12))
    copy = [(np.asarray(x).copy(), y) for x, y in (data[i] for i in range(len(data)))]
    copy[11] = (copy[11][0] * 0.5, copy[11][1])  # one input differs, in shard 1's half only
    clf = estimator(info)
    certify_dataset(clf, data, indices, tmp_path / "a0.jsonl", n=N, progress=False, shard=(0, 2))
    certify_dataset(clf, copy, indices, tmp_path / "a1.jsonl", n=N, progress=False, shard=(1, 2))
    with pytest.raises(ValueError, match="plan.data_sha256"):
        merge_records([tmp_path / "a0.jsonl", tmp_path / "a1.jsonl"], tmp_path / "m.jsonl")
    # A record whose input hash was edited no longer matches the fingerprint either.
    certify_dataset(clf, data, indices, tmp_path / "b1.jsonl", n=N, progress=False, shard=(1, 2))
    _edit(tmp_path / "b1.jsonl", 2, input_sha256="0" * 16)
    with pytest.raises(ValueError, match="data_sha256"):
        merge_records([tmp_path / "a0.jsonl", tmp_path / "b1.jsonl"], tmp_path / "m.jsonl")
    # Unsharded: a resume compares every recorded input, not the first few.
    certify_dataset(clf, data, indices, tmp_path / "r.jsonl", n=N, progress=False)
    with pytest.raises(ValueError, match="input 11"):
        certify_dataset(clf, copy, indices, tmp_path / "r.jsonl", n=N, progress=False)


# Partial files that look finished ---------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))])
def test_an_interrupted_merge_leaves_no_file_and_the_rerun_completes(tmp_path, test_data, monkeypatch, failure):
    data, info = test_data
    paths = _shards(tmp_path, data, info, list(range(0, 40, 5)))
    append, calls = RecordWriter.append, []

    def interrupted(self, record):
        calls.append(1)
        if len(calls) == 3:
            raise failure
        append(self, record)

    monkeypatch.setattr(RecordWriter, "append", interrupted)
    with pytest.raises(type(failure)):
        merge_records(paths, tmp_path / "merged.jsonl")
    monkeypatch.undo()
    assert not (tmp_path / "merged.jsonl").exists() and not list(tmp_path.glob(".merged*"))
    assert len(merge_records(paths, tmp_path / "merged.jsonl")) == 8


def test_a_refused_run_leaves_no_header_only_file(tmp_path, monkeypatch):
    from art_some.estimators.smoothed import SmoothedClassifier

    def broken(self, *args, **kwargs):
        raise ValueError("the first batch failed")

    monkeypatch.setattr(SmoothedClassifier, "certify_detailed", broken)
    one_line_error(run(*CERTIFY, "--output", tmp_path / "r.jsonl"), "the first batch failed")
    assert files_under(tmp_path) == []
    monkeypatch.undo()
    assert run(*CERTIFY, "--output", tmp_path / "r.jsonl").exit_code == 0  # the corrected run is not blocked


def test_merging_a_shard_still_being_written_is_refused_and_works_once_it_finished(tmp_path, test_data):
    data, info = test_data
    paths = _shards(tmp_path, data, info, list(range(0, 40, 5)))
    with RecordWriter(paths[1]):  # the shard's certify run still holds its file
        with pytest.raises(ValueError, match="still being written"):
            merge_records(paths, tmp_path / "merged.jsonl")
        assert not (tmp_path / "merged.jsonl").exists()
    assert len(merge_records(paths, tmp_path / "merged.jsonl")) == 8


# Resource exhaustion and unclear refusals --------------------------------------------------------------------------
def test_an_absurd_shard_count_is_refused_at_the_start_and_in_a_forged_header(tmp_path, test_data):
    one_line_error(run(*CERTIFY, "--shard", "0/100000000000000000000", "--output", tmp_path / "r.jsonl"),
                   "K must be at most 3")
    assert files_under(tmp_path) == []
    data, info = test_data
    paths = _shards(tmp_path, data, info, list(range(0, 40, 5)), k=4)
    header = read_header(paths[0])
    lines = paths[0].read_text().splitlines()
    lines[0] = json.dumps({"art_some_header": {**header, "shard": [0, 10**20]}})
    paths[0].write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="field shard"):
        merge_records(paths, tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match=r"shard\(s\) 0/4, 1/4, 3/4 missing"):
        merge_records([paths[2]], tmp_path / "m.jsonl")


def test_an_audit_shard_count_is_bounded_by_its_chunks(tmp_path):
    one_line_error(run(*EVALUATE, "--chunk", "2", "--shard", "0/2", "--output-dir", tmp_path / "a"),
                   "chunks of 2 inputs; K must be at most 1")
    assert files_under(tmp_path) == []


def test_two_train_runs_on_one_folder_are_locked_against_each_other(tmp_path):
    from art_some.runs.train import _output_lock

    with _output_lock(tmp_path / "t", 0):  # another run holds the folder
        one_line_error(run(*TRAIN, "--epochs", 1, "--output-dir", tmp_path / "t"), "being trained by another")
    assert files_under(tmp_path / "t") == []
    assert run(*TRAIN, "--epochs", 1, "--output-dir", tmp_path / "t").exit_code == 0


# Files destroyed that are not ours ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["checkpoint", "notes", "one-line notes", "link"])
def test_certify_refuses_an_output_that_is_not_a_record_file_without_touching_it(tmp_path, kind):
    target = _checkpoint(tmp_path) if kind in ("checkpoint", "link") else tmp_path / "notes.txt"
    if kind == "notes":
        target.write_text("my notes\nabout the run\nwithout a final newline")
    elif kind == "one-line notes":
        target.write_text("my notes")
    output = target
    if kind == "link":
        output = tmp_path / "r.jsonl"
        output.symlink_to(target)
    before = target.read_bytes()
    one_line_error(run(*CERTIFY, "--output", output), str(output))
    assert target.read_bytes() == before


def test_train_refuses_to_replace_a_checkpoint_that_no_run_there_wrote(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    copied = _checkpoint(folder)  # folder/model.safetensors, copied there by hand
    before = copied.read_bytes()
    one_line_error(run(*TRAIN, "--epochs", 1, "--output-dir", folder), "not written by a run", "--restart")
    args = [a if a != "digits_cnn" else copied for a in TRAIN]  # fine-tuning from the file the run would write
    one_line_error(run(*args, "--epochs", 1, "--output-dir", folder, "--restart"), "this run writes")
    assert copied.read_bytes() == before


def test_outputs_without_an_extension_get_distinct_tsvs(tmp_path):
    for sigma in ("0.25", "0.5"):
        args = [a if a != "0.25" else sigma for a in CERTIFY]
        result = run(*args, "--output", tmp_path / f"res_s{sigma}")
        assert result.exit_code == 0 and f"res_s{sigma}.tsv" in result.output, result.output
    assert (tmp_path / "res_s0.25.tsv").is_file() and (tmp_path / "res_s0.5.tsv").is_file()
    assert tsv_path("r.jsonl").name == "r.tsv"
    from art_some.runs.certify import config_path

    assert config_path("res_s0.25").name == "res_s0.25.config.yaml" and config_path("r.jsonl").name == "r.config.yaml"


def test_write_atomically_never_follows_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "r.tsv.tmp").symlink_to(victim)  # the fixed name of earlier versions
    write_atomically(tmp_path / "r.tsv", "idx\n")
    assert victim.read_text() == "precious" and (tmp_path / "r.tsv").read_text() == "idx\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tsv", "r.tsv.tmp", "victim.txt"]
    assert oct((tmp_path / "r.tsv").stat().st_mode & 0o777) != oct(0o600)


# Refusals that leave a file blocking the rerun, or a traceback -------------------------------------------------
def test_compile_that_cannot_work_fails_before_the_header_in_one_line(tmp_path, monkeypatch):
    def no_compiler(module, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error\n\nCommand: g++ ...\n")
        return call

    monkeypatch.setattr(torch, "compile", no_compiler)
    result = run(*CERTIFY, "--compile", "--output", tmp_path / "r.jsonl")
    last = result.output.strip().splitlines()[-1]  # torch's own words hold "Error" too
    assert result.exit_code == 2 and "Traceback" not in result.output and last.startswith("Error: --compile: ")
    assert "InductorError" in last and "run without --compile" in last
    assert files_under(tmp_path) == []
    monkeypatch.undo()
    assert run(*CERTIFY, "--output", tmp_path / "r.jsonl").exit_code == 0


@pytest.mark.parametrize("writer", ["torch", "safetensors"])
def test_train_on_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, writer):
    import art_some.models as models

    def full_torch(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    class SafetensorError(Exception):
        pass

    def full_safetensors(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No "
                              "space left on device\" })")

    if writer == "torch":
        monkeypatch.setattr(torch, "save", full_torch)
    else:
        monkeypatch.setattr(models, "save_checkpoint", lambda *a, **k: full_safetensors())
    result = run(*TRAIN, "--epochs", 1, "--output-dir", tmp_path / "t")
    one_line_error(result, "No space left on device", "train_state.pt" if writer == "torch" else "model.safetensors",
                   "free some space")


def test_every_audit_header_records_its_chunk(tmp_path):
    assert run(*EVALUATE, "--output-dir", tmp_path / "a").exit_code == 0
    assert json.loads((tmp_path / "a" / "audit_config.json").read_text())["chunk"] == 8
    one_line_error(run(*EVALUATE, "--chunk", 1, "--output-dir", tmp_path / "a"), "chunk")


def test_world_size_without_torchrun_is_one_line_and_no_file(tmp_path, monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    one_line_error(run(*CERTIFY, "--output", tmp_path / "r.jsonl"), "WORLD_SIZE=2", "torchrun")
    one_line_error(run(*TRAIN, "--epochs", 1, "--output-dir", tmp_path / "t"), "WORLD_SIZE=2")
    assert files_under(tmp_path) == []


def test_a_folder_named_like_a_registered_model_is_named_in_a_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits_cnn").mkdir()
    _checkpoint(tmp_path / "digits_cnn")
    result = run(*CERTIFY, "--output", "r.jsonl")
    assert result.exit_code == 0 and "the registered model 'digits_cnn', not the folder digits_cnn/" in result.output
    assert "--model digits_cnn/model.safetensors" in result.output
    result = run(*TRAIN, "--epochs", 1, "--output-dir", "t")
    assert result.exit_code == 0 and "the registered model 'digits_cnn'" in result.output
