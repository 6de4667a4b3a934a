"""
What records and their report keep: every non-zero count, each input's own share of the time (the TSV's ``time`` is
per input, as Cohen et al.'s), and provenance lines that say each thing once.
"""
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from art_some.core.certify import CertifyResult
from art_some.data import digits
from art_some.evaluation import certify_dataset
from art_some.evaluation.runner import inputs_per_call
from art_some.models import DigitsCNN
from art_some.runs.header import describe_header
from art_some.runs.records import read_records, read_tsv, records_from_result
from tests.conftest import make_classifier


def test_records_keep_every_non_zero_count_largest_first():
    counts = np.array([[0, 5, 3, 0, 2, 3], [7, 0, 0, 0, 0, 0]])
    result = CertifyResult(np.array([1, 0]), np.array([0.1, 0.2]), np.array([0.6, 0.7]), counts, counts, 10, 13,
                           0.001, 0.25, np.array([0.5, 0.5]))
    records = records_from_result(result, [1, 0], [4, 9], "smoothed")
    assert list(records[0]["counts"].items()) == [("1", 5), ("2", 3), ("5", 3), ("4", 2)]
    assert records[1]["counts"] == {"0": 7}


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A certify run that packs 5 inputs into each engine call, with a clock that moves 1 s per reading."""
    torch.manual_seed(0)
    clf = make_classifier(DigitsCNN(), (1, 8, 8), 10, sample_size=20, noise_batch_size=500, scale=0.5)
    assert inputs_per_call(clf, n=100, n0=None, batch_size=None) == 5
    data, _ = digits(split="test")
    out = tmp_path_factory.mktemp("packed") / "r.jsonl"
    ticks = itertools.count()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("art_some.core.certify.time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
        records = certify_dataset(clf, data, range(10), out, n=100, progress=False)
    return out, records


def test_each_input_gets_its_share_of_a_packed_calls_time(packed):
    out, records = packed
    # One engine call reads the clock twice (start, end): 1 s for 5 inputs, 0.2 s each, not 1 s repeated.
    assert [r["seconds"] for r in records] == [0.2] * 10
    assert [r["seconds"] for r in read_tsv(out.with_suffix(".tsv"))] == [0.2] * 10
    assert out.with_suffix(".tsv").read_text().splitlines()[1].endswith("\t0:00:00.200000")
    assert sum(r["seconds"] for r in records) == pytest.approx(2.0)  # two calls of 1 s: the run's whole time


def test_all_counts_of_a_real_run_add_up_to_n(packed):
    out, records = packed
    for record in read_records(out, check=True):
        assert sum(record["counts"].values()) == 100 and 0 not in record["counts"].values()
    assert any(len(r["counts"]) > 2 for r in records)  # more than the top two classes are kept


def test_provenance_names_each_thing_once(packed):
    from art_some.runs.records import read_header

    out, _ = packed
    header = read_header(out)
    text = describe_header(header)
    cls = "art_some.estimators.smoothed.SmoothedClassifier"
    assert text.count(cls) == 1 and f"  smoothed ({cls}): sigma 0.5, n0 20, n 100, alpha 0.001" in text
    params = [line for line in text.splitlines() if "estimator parameters" in line][0]
    for hidden in ("use_amp", "opt_level", "loss_scale", "alpha", "sample_size"):
        assert hidden not in params, (hidden, params)
    assert "nb_classes 10" in params
    audit = describe_header({**header, "kind": "audit", "method": None})  # the audit's header names no method
    assert audit.count(cls) == 1 and f"  {cls}: sigma 0.5" in audit
    changed = describe_header({**header, "estimator_params": {**header["estimator_params"], "use_amp": True,
                                                              "sample_size": 7}})
    assert "use_amp true" in changed and "sample_size 7" in changed  # shown where they differ
