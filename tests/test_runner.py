"""The batched runner: many inputs per engine call, records identical to one input per call (noise keyed by index)."""
import numpy as np
import torch

from art_some.core.results import read_jsonl, records_from_result
from art_some.data import digits
from art_some.evaluation import certify_dataset
from art_some.evaluation.runner import inputs_per_call
from art_some.models import DigitsCNN
from conftest import make_classifier


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
