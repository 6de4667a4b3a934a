"""
Golden records: every estimator's certificates, predictions and vote counts, and the ``art-some certify`` /
``art-some evaluate`` records, compared bit for bit with the outputs stored in ``tests/golden/*.json``.

The stored files were written by the code as it was when they were generated; a change of any certificate, count,
radius, bound, record field or dtype fails here (floats are compared with ``==``, NaN equal to NaN). A missing
golden file fails too (it is never skipped).

Regenerate the files (only when a change of results is intended, and say why in the commit):

    ART_SOME_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden.py

Everything runs on tiny seeded models (``torch.manual_seed`` before each is built), a few digits inputs or synthetic
ones, small n and batch sizes that do not divide n, through public methods and the command line only. Torch runs
on one thread here so that float reductions are the same from run to run; results may still differ on another CPU
or torch build (regenerate there first, then compare).
"""
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from art_some import (
    DataDependentSmoothedClassifier,
    DenoisedMultiScaleClassifier,
    MultiHeadSmoothedClassifier,
    SmoothedClassifier,
    SmoothReduceClassifier,
)
from art_some.cli import cli
from art_some.data import digits_arrays
from art_some.estimators import UnsoundCertificateWarning
from art_some.models import DigitsCNN, IdentityDenoiser, create_denoiser
from art_some.models.multihead import digits_cnn_multihead
from tests.conftest import Linear2

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("ART_SOME_REGENERATE_GOLDEN") == "1"
LOSS = torch.nn.CrossEntropyLoss()
SHAPE = (1, 8, 8)

# Fields that change from run to run or machine to machine (timings, versions, where files were read from).
# Floats agree to float32 rounding, not bit for bit: torch picks its CPU kernels by instruction set (AVX2 or
# AVX-512), which moves float32 results (DDRS's optimised sigmas, a cascade's hybrid scores) in the 6th or 7th
# digit (at most 6e-6 relative between the two); counts, classes and decisions stay exact.
FLOAT_RTOL, FLOAT_ATOL = 1e-5, 1e-8
VOLATILE = frozenset({"seconds", "time", "art_some", "torch", "source"})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# Canonical JSON form and exact comparison
# ----------------------------------------------------------------------------------------------------------------
def plain(value):
    """A JSON form of ``value``: numpy arrays with their dtype and shape, numpy scalars as Python numbers."""
    if isinstance(value, np.ndarray):
        out = {"shape": list(value.shape), "values": value.tolist()}
        if value.dtype.kind in "biuf":
            out["dtype"] = str(value.dtype)
        return out
    if isinstance(value, torch.Tensor):
        return plain(value.detach().cpu().numpy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def as_list(value):
    """A numpy value as a plain list or number (``extra`` entries, as records hold them)."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else plain(value)


def differences(expected, actual, path="$"):
    """Every place where ``actual`` differs from ``expected`` (types included; NaN equals NaN)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{path}.{k}: missing" for k in expected.keys() - actual.keys()]
        out += [f"{path}.{k}: unexpected (value {actual[k]!r:.80})" for k in actual.keys() - expected.keys()]
        for key in sorted(expected.keys() & actual.keys()):
            out += differences(expected[key], actual[key], f"{path}.{key}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: length {len(actual)}, expected {len(expected)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{path}[{i}]")]
    if type(expected) is not type(actual):
        return [f"{path}: {actual!r:.80} ({type(actual).__name__}), expected {expected!r:.80} "
                f"({type(expected).__name__})"]
    if isinstance(expected, float) and math.isnan(expected) and math.isnan(actual):
        return []
    if isinstance(expected, float) and isinstance(actual, float) and close(actual, expected):
        return []
    if isinstance(expected, str) and "," in expected and isinstance(actual, str):  # a CSV line: field by field
        fields, got = expected.split(","), actual.split(",")
        if len(fields) == len(got) and all(a == e or (number(a) and number(e) and close(float(a), float(e)))
                                           for a, e in zip(got, fields)):
            return []
    if expected != actual:
        extra = f" (float.hex {actual.hex()} vs {expected.hex()})" if isinstance(expected, float) else ""
        return [f"{path}: {actual!r:.120}, expected {expected!r:.120}{extra}"]
    return []


def close(actual: float, expected: float) -> bool:
    return math.isclose(actual, expected, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL)


def number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return "." in text or "e" in text.lower()  # a float field; integer fields (counts, classes) compare exactly


def write_golden(path: Path, data: dict) -> None:
    """One line per mode, so that a diff of a regenerated file shows which modes changed."""
    lines = [f" {json.dumps(key)}: {json.dumps(data[key], sort_keys=True)}" for key in sorted(data)]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def check_golden(name: str, actual: dict) -> None:
    actual = json.loads(json.dumps(plain(actual)))  # the same normal form as the stored file (floats by repr)
    path = GOLDEN / f"{name}.json"
    if REGENERATE:
        GOLDEN.mkdir(exist_ok=True)
        write_golden(path, actual)
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; generate it with ART_SOME_REGENERATE_GOLDEN=1")
    expected = json.loads(path.read_text())
    found = differences(expected, actual)
    if found:
        shown = "\n".join(found[:25]) + (f"\n... and {len(found) - 25} more" if len(found) > 25 else "")
        pytest.fail(f"{name}: {len(found)} difference(s) from {path.name}:\n{shown}")


# ----------------------------------------------------------------------------------------------------------------
# Inputs and models
# ----------------------------------------------------------------------------------------------------------------
def digits_inputs(count=8, step=29):
    x, y = digits_arrays("test")
    return x[::step][:count], y[::step][:count]


def centroid_model(mean=0.5, std=0.25):
    """Nearest class mean on the digits training set (logits 2 mu.x - |mu|^2), on inputs standardised (x-mean)/std."""
    x, y = digits_arrays("train")
    flat = x.reshape(len(x), -1).astype(np.float64)
    mu = np.stack([flat[y == c].mean(axis=0) for c in range(10)])
    layer = torch.nn.Linear(64, 10)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(2 * std * mu))
        layer.bias.copy_(torch.from_numpy(2 * mean * mu.sum(axis=1) - (mu**2).sum(axis=1)))
    return torch.nn.Sequential(torch.nn.Flatten(), layer)


def digits_cnn(seed=0):
    torch.manual_seed(seed)
    return DigitsCNN().eval()


# ----------------------------------------------------------------------------------------------------------------
# The modes
# ----------------------------------------------------------------------------------------------------------------
def certificate(result) -> dict:
    """Everything a CertifyResult holds but its timings."""
    out = {key: plain(getattr(result, key)) for key in ("predict", "radius", "p_lower", "counts_selection",
                                                          "counts_estimation", "squares_estimation")}
    out.update(n0=plain(result.n0), n=plain(result.n), alpha=plain(result.alpha), sigma=plain(result.sigma),
               extra={key: as_list(value) for key, value in result.extra.items()}, length=len(result))
    for key in ("draws", "stopped_by", "radii", "certified_at"):
        out[key] = plain(getattr(result, key, None))
    return out


def refused(call) -> str:
    """A mode an estimator refuses today: it must still raise ValueError (the message is not compared)."""
    with pytest.raises(ValueError) as err:
        call()
    return type(err.value).__name__


def fixed_n_modes(est, x, n, batch_size) -> dict:
    count = len(x)
    return {
        "certify_detailed": certificate(est.certify_detailed(x, n=n, batch_size=batch_size)),
        "certify_detailed_options": certificate(est.certify_detailed(
            x[: count // 2], n=n // 2 + 3, n0=17, alpha=0.01, batch_size=64,
            indices=[5, 100, 7, 3000, 11, 64][: count // 2])),
        "certify": plain(est.certify(x[:3], n=n // 2, batch_size=batch_size + 9)),
    }


def sequential_modes(est, x, n, batch_size) -> dict:
    return {
        "sequential_radius": certificate(est.certify_sequential(x, n=n, start=40, batch_size=batch_size)),
        "sequential_radius_options": certificate(est.certify_sequential(
            x[:4], n=n // 2, tolerance=0.1, growth=1.5, alpha=0.01, n0=25, indices=[9, 1, 40, 2], batch_size=77)),
        "sequential_radii": certificate(est.certify_sequential(x, n=n, radii=[0.0, 0.05, 0.1, 0.25], start=40,
                                                               batch_size=batch_size)),
        "certify_at": plain(est.certify_at(x[:4], radii=[0.02, 0.2], n=n // 2, batch_size=batch_size)),
    }


def refused_sequential_modes(est, x, n) -> dict:
    return {
        "sequential_radius_refused": refused(lambda: est.certify_sequential(x[:2], n=n)),
        "sequential_radii_refused": refused(lambda: est.certify_sequential(x[:2], n=n, radii=[0.1])),
        "certify_at_refused": refused(lambda: est.certify_at(x[:2], radii=[0.1], n=n)),
    }


def _same(default, explicit):
    """``default``, after checking that it equals ``explicit`` bit for bit (NaN rows included)."""
    np.testing.assert_array_equal(default, explicit)
    return default


def predict_modes(est, x, audit_n=120) -> dict:
    classes, scores = est.predict_classes(x)
    point, point_scores = est.predict_classes(x, abstain=False)
    return {
        # predict's default is ART's one-hot rows (pinned under predict_onehot); the counts on request.
        "predict": plain(est.predict(x, output="counts")),
        "predict_onehot": plain(_same(est.predict(x), est.predict(x, output="onehot"))),
        "predict_no_abstain": plain(est.predict(x, output="counts", is_abstain=False)),
        "predict_classes": {"classes": plain(classes), "scores": plain(scores)},
        "predict_classes_no_abstain": {"classes": plain(point), "scores": plain(point_scores)},
        "predict_counts": plain(est.predict_counts(x, n=77, batch_size=30)),
        "audit_counts": plain(est.audit_counts(x, n=audit_n, indices=np.arange(200, 200 + len(x)))),
    }


def all_modes(est, x, n=300, batch_size=173, sequential=True) -> dict:
    out = {**fixed_n_modes(est, x, n, batch_size), **predict_modes(est, x)}
    out.update(sequential_modes(est, x, 2 * n, batch_size) if sequential else refused_sequential_modes(est, x, n))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The estimators
# ----------------------------------------------------------------------------------------------------------------
def smoothed(model, input_shape=SHAPE, nb_classes=10, **kwargs):
    kwargs = {"device_type": "cpu", "clip_values": (0.0, 1.0), "sample_size": 40, "noise_batch_size": 173,
              **kwargs}
    return SmoothedClassifier(model, LOSS, input_shape, nb_classes, **kwargs)


def case_smoothed_digits_cnn():
    x, _ = digits_inputs()
    return all_modes(smoothed(digits_cnn(0), scale=0.25), x)


def case_smoothed_centroid():
    x, _ = digits_inputs(10, 31)
    est = smoothed(centroid_model(), scale=0.5, preprocessing=(0.5, 0.25), seed=7)
    return all_modes(est, x)


def case_smoothed_linear2():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    torch.manual_seed(0)
    est = smoothed(Linear2(rng.normal(size=6), 0.3), input_shape=(6,), nb_classes=2, clip_values=None, scale=0.5,
                   sample_size=50)
    return all_modes(est, x, n=400, batch_size=97)


def case_multihead():
    x, _ = digits_inputs()
    torch.manual_seed(1)
    net = digits_cnn_multihead(num_heads=3).eval()
    est = MultiHeadSmoothedClassifier(net, LOSS, SHAPE, 10, device_type="cpu", clip_values=(0.0, 1.0), scale=0.25,
                                      sample_size=40, noise_batch_size=173)
    return all_modes(est, x)


def reducer(model=None, **kwargs):
    kwargs = {"device_type": "cpu", "clip_values": (0.0, 1.0), "scale": 0.25, "sample_size": 30,
              "noise_batch_size": 173, **kwargs}
    return SmoothReduceClassifier(digits_cnn(0) if model is None else model, LOSS, SHAPE, 10, **kwargs)


def case_smooth_reduce_default():
    x, _ = digits_inputs(6)
    est = reducer(patches={"layout": "grid", "size": 6, "stride": 2}, patch_resize=8)
    return all_modes(est, x, n=200)


def case_smooth_reduce_independent_max():
    x, _ = digits_inputs(6)
    # The class-mean classifier on 8x8 patches of the input resized to 10x10, a draw of noise per patch.
    est = reducer(centroid_model(0.0, 1.0), patches={"layout": "grid", "size": 8, "stride": 1}, resize=10,
                  noise_mode="independent", aggregation="max")
    out = all_modes(est, x, n=200)
    out["radius_divisor"] = est.radius_divisor
    return out


def case_smooth_reduce_vote_average():
    x, _ = digits_inputs(6)
    layout = {"layout": "grid", "size": 6, "stride": 2}
    est = reducer(patches=layout, patch_resize=8, certificate="vote_average")
    out = all_modes(est, x, n=200)  # sequential since the rules own their bounds (Bernstein's here)
    hoeffding = reducer(patches=layout, patch_resize=8, certificate="vote_average", bound="hoeffding")
    out["certify_detailed_hoeffding"] = certificate(hoeffding.certify_detailed(x, n=200, batch_size=173))
    return out


def denoised(model, denoiser, sigmas, **kwargs):
    kwargs = {"device_type": "cpu", "clip_values": (0.0, 1.0), "sample_size": 30, "noise_batch_size": 173, **kwargs}
    return DenoisedMultiScaleClassifier(model, None, SHAPE, 10, denoiser=denoiser, sigmas=sigmas, **kwargs)


def cascade_modes(est, x, n=200):
    out = {**fixed_n_modes(est, x, n, 173), **predict_modes(est, x)}
    # Sequential cascades need the uniform alpha split (a confidence sequence's level is fixed before its draws).
    out.update(sequential_modes(est, x, 2 * n, 173) if est.alpha_split == "uniform"
               else refused_sequential_modes(est, x, n))
    classes, scores, levels = est.predict_levels(x)
    out["predict_levels"] = {"classes": plain(classes), "scores": plain(scores), "levels": plain(levels)}
    classes, scores, levels = est.predict_levels(x, abstain=False)
    out["predict_levels_no_abstain"] = {"classes": plain(classes), "scores": plain(scores), "levels": plain(levels)}
    out["failure_bound"] = est.failure_bound()
    return out


def case_denoised_cascade_diffusion():
    x, _ = digits_inputs(6)
    model = digits_cnn(0)
    torch.manual_seed(0)
    denoiser = create_denoiser("tiny_diffusion", widths=(8, 16))
    return cascade_modes(denoised(model, denoiser, (0.25, 0.5, 1.0)), x)


def case_denoised_hybrid_identity():
    x, _ = digits_inputs(8)
    est = denoised(centroid_model(0.0, 1.0), IdentityDenoiser(), (0.25, 0.5), predict_rule="hybrid",
                   alpha_split="sequential", p0=0.6, seed=3)
    return cascade_modes(est, x)


def data_dependent(**kwargs):
    kwargs = {"device_type": "cpu", "clip_values": (0.0, 1.0), "scale": 0.25, "sample_size": 40,
              "noise_batch_size": 173, **kwargs}
    return DataDependentSmoothedClassifier(centroid_model(0.0, 1.0), LOSS, SHAPE, 10, **kwargs)


def case_data_dependent_knn():
    x, _ = digits_inputs()
    reference = digits_arrays("train")[0][:300]
    est = data_dependent(reference=reference, rate=0.01, knn_k=10, radius_steps=40, sigma_steps_grid=21)
    return all_modes(est, x)


def case_data_dependent_optimize():
    from art_some.estimators.memory import MemoryCertifier

    x, _ = digits_inputs(6)
    est = data_dependent(sigma_rule="optimize", certificate="fixed_sigma", sigma_steps=3, sigma_samples=4,
                         sigma_lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsoundCertificateWarning)
        out = all_modes(est, x)
        memory = MemoryCertifier()
        out["certify_with_memory"] = certificate(est.certify_with_memory(x, n=200, memory=memory,
                                                                         order=[3, 1, 0, 2, 5, 4]))
        out["certify_with_memory_again"] = certificate(est.certify_with_memory(x[:3] + 0.01, n=200,
                                                                               memory=memory))
    return out


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_estimator_outputs_match_the_golden_records(name):
    check_golden(name, CASES[name]())


def test_the_comparison_forgives_float32_ulps_only():
    assert differences({"r": [0.49042196828592666, 3]}, {"r": [0.4904217868978883, 3]}) == []  # AVX2 vs AVX-512
    assert differences({"r": [0.4904, 3]}, {"r": [0.4904 * (1 + 1e-4), 3]})  # a real change in the 4th digit
    assert differences({"r": [0.5, 3]}, {"r": [0.5, 4]}) and differences({"r": 1.0}, {"r": 1})  # counts and types
    assert differences({"csv": "0,7,-1,0.4999999701976776"}, {"csv": "0,7,-1,0.5"}) == []
    assert differences({"csv": "0,7,-1,0.5"}, {"csv": "0,8,-1,0.5"}) and differences({"csv": "0,7,-1,0.5"},
                                                                                    {"csv": "0,7,-1,0.6"})


def test_unsound_rules_still_warn():
    x, _ = digits_inputs(2)
    est = data_dependent(sigma_rule="optimize", certificate="fixed_sigma", sigma_steps=0)
    with pytest.warns(UnsoundCertificateWarning):
        est.certify_detailed(x, n=20)


# ----------------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------------
CERTIFY = ["certify", "--model", "digits_cnn", "--sigma", "0.25", "--n0", "20", "--batch-size", "64", "--skip", "37",
           "--max-inputs", "6", "--device", "cpu"]
CLI_RUNS = {
    "cli_certify": [*CERTIFY, "--n", "200"],
    "cli_certify_sequential": [*CERTIFY, "--n", "400", "--sequential"],
    "cli_certify_radii": [*CERTIFY, "--n", "400", "--radii", "0,0.1,0.2"],
    "cli_certify_smooth_reduce": [*CERTIFY, "--n", "150", "--estimator", "smooth_reduce", "--option",
                                  'patches={"layout": "grid", "size": 8, "stride": 1}', "--option", "resize=10",
                                  "--option", "noise_mode=independent", "--option", "aggregation=max"],
    "cli_certify_data_dependent": [*CERTIFY, "--n", "150", "--seed", "2", "--estimator", "data_dependent",
                                   "--option", "knn_k=5", "--option", "radius_steps=30"],
}
EVALUATE = ["evaluate", "--model", "digits_cnn", "--sigma", "0.25", "--n0", "20", "--n", "100", "--batch-size", "64",
            "--skip", "37", "--max-inputs", "4", "--device", "cpu", "--attack", "pgd", "--attack", "deepfool",
            "--eps", "0.5,1", "--budget", "pgd.max_iter=3", "--budget", "deepfool.max_iter=3", "--verify-n", "60",
            "--chunk", "2"]


def stable(value):
    """``value`` without the fields that change between runs (timings, versions, paths)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def read_lines(path: Path) -> tuple[dict | None, list[dict]]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if lines and "art_some_header" in lines[0]:
        return lines[0]["art_some_header"], lines[1:]
    return None, lines


def invoke(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result


_cli_cache = {}


def cli_outputs(name, tmp_path_factory) -> dict:
    """Run one command once per session; the records, the TSV without its time column, and the header apart."""
    if name not in _cli_cache:
        folder = tmp_path_factory.mktemp(name)
        if name == "cli_evaluate":
            invoke([*EVALUATE, "--output-dir", str(folder / "audit")])
            _, records = read_lines(folder / "audit" / "audit.jsonl")
            header = json.loads((folder / "audit" / "audit_config.json").read_text())
            summary = json.loads((folder / "audit" / "audit.json").read_text())
            body = {"records": stable(records), "summary": stable(summary),
                    "csv": (folder / "audit" / "audit.csv").read_text().splitlines()}
        else:
            out = folder / "r.jsonl"
            invoke([*CLI_RUNS[name], "--output", str(out)])
            header, records = read_lines(out)
            rows = [line.split("\t") for line in out.with_suffix(".tsv").read_text().splitlines()]
            assert rows[0][-1] == "time"
            body = {"records": stable(records), "tsv": ["\t".join(row[:-1]) for row in rows]}
        _cli_cache[name] = {"body": body, "header": stable(header)}
    return _cli_cache[name]


CLI_NAMES = sorted([*CLI_RUNS, "cli_evaluate"])


@pytest.mark.parametrize("name", CLI_NAMES)
def test_cli_records_match_the_golden_records(name, tmp_path_factory):
    check_golden(name, cli_outputs(name, tmp_path_factory)["body"])


@pytest.mark.parametrize("name", CLI_NAMES)
def test_cli_headers_match_the_golden_headers(name, tmp_path_factory):
    # Apart from the records: the header names the estimator's class by its module path, which a refactor that
    # moves modules changes (and with it, whether old record files resume).
    check_golden(f"{name}_header", cli_outputs(name, tmp_path_factory)["header"])
