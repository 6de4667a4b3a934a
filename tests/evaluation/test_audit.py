"""The attack-vs-certificate audit: it catches an unsound certificate with a real ART attack, and finds nothing wrong
with the sound ones; reports, replay, resume; every registered estimator; ``art-some evaluate``."""
import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from art_some import SmoothReduceClassifier
from art_some.estimators import UnsoundCertificateWarning
from art_some.evaluation import audit, replay_violation
from art_some.evaluation.attacks import vote_counts
from art_some.evaluation.audit import attack_view
from art_some.patches import grid_layout
from tests.conftest import Linear2

LOSS = torch.nn.CrossEntropyLoss()


def _patch_toy(count=6, margin=0.2, seed=5):
    """Smooth-Reduce's linear patch model and inputs at exact L2 distance ``margin`` from G's boundary."""
    rng = np.random.default_rng(seed)
    layout = grid_layout((12, 12), 8, 1)
    w = rng.uniform(0.5, 1.5, size=layout.patch_size)
    cover = np.zeros(layout.input_size)
    for start in layout.offsets:
        cover[tuple(slice(s, s + p) for s, p in zip(start, layout.patch_size))] += w
    w_bar = cover / layout.num_patches
    b = -0.5 * w_bar.sum()
    unit = w_bar / np.linalg.norm(w_bar)
    xs = []
    for _ in range(count):
        u = 0.5 + rng.uniform(-0.1, 0.1, size=layout.input_size)
        u -= ((w_bar * u).sum() + b) / np.linalg.norm(w_bar) * unit  # onto the boundary
        xs.append((u + margin * unit)[None])  # then margin towards class 1
    return Linear2(w, b), layout, np.array(xs, dtype=np.float32)


def _reducer(model, layout, **options):
    return SmoothReduceClassifier(model, LOSS, (1, 12, 12), 2, device_type="cpu", scale=0.25, sample_size=100,
                                  scores="logits", patches=layout, noise_batch_size=4000, gradient_samples=16,
                                  clip_values=(0.0, 1.0), **options)


def test_the_audit_catches_the_papers_unsound_smooth_reduce_rule_and_not_the_sound_modes(tmp_path):
    model, layout, x = _patch_toy()
    y = np.ones(len(x), dtype=int)
    found = {}
    for mode, options in (("shared", {"noise_mode": "shared"}), ("corrected", {"noise_mode": "independent"}),
                          ("paper", {"noise_mode": "independent", "unsound_paper_radius": True})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnsoundCertificateWarning)
            result = audit(_reducer(model, layout, **options), x, y, attacks=["pgd"], n=4000, eps=(0.1, 0.3, 0.5),
                           verify_n=2000, output_dir=tmp_path / mode, progress=False)
        found[mode] = result
        assert all(r["predict"] == 1 for r in result.records)  # every input certified, class 1
    # The true distance to the boundary is 0.2: PGD flips every input at eps 0.3 in every mode ...
    for result in found.values():
        assert all(r["attacks"]["pgd"]["flipped"] and r["attacks"]["pgd"]["eps"] == 0.3 for r in result.records)
    # ... which is inside the paper rule's (inflated) radii, and outside the sound ones.
    assert len(found["paper"].violations) == len(x)
    assert found["shared"].violations == [] and found["corrected"].violations == []
    assert all(r["radius"] < 0.2 for mode in ("shared", "corrected") for r in found[mode].records)
    # A violation is saved with what replays it: the same fresh noise gives the same counts.
    violation = found["paper"].violations[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsoundCertificateWarning)
        replay = replay_violation(_reducer(model, layout, noise_mode="independent", unsound_paper_radius=True),
                                  tmp_path / "paper" / violation["file"])
    assert replay["same_counts"] and replay["confirmed"] and replay["distance"] < replay["radius"]
    summary = json.loads((tmp_path / "paper" / "audit.json").read_text())
    assert summary["violations"] == len(x) and summary["violation_rate"] == 1.0
    for ext in ("csv", "md", "png"):
        assert (tmp_path / "paper" / f"audit.{ext}").stat().st_size > 0
    curves = found["shared"].curves()
    assert np.all(curves["best"] >= curves["certified"])  # empirical (upper bound) above certified (lower bound)


def _tiny(name, cls, trained, reference):
    """A small instance of every registered estimator (a plugin's is built with SmoothedClassifier's arguments)."""
    common = dict(device_type="cpu", clip_values=(0.0, 1.0), sample_size=32, noise_batch_size=2000, gradient_samples=8)
    model = trained.model
    if name == "denoised_multiscale":
        from art_some.models.diffusion import IdentityDenoiser

        return cls(model, LOSS, (1, 8, 8), 10, denoiser=IdentityDenoiser(), sigmas=(0.5, 0.25), **common)
    if name == "smooth_reduce":
        return cls(model, LOSS, (1, 8, 8), 10, scale=0.25, resize=10, patches={"layout": "grid", "size": 8,
                                                                                   "stride": 2}, **common)
    if name == "data_dependent":
        return cls(model, LOSS, (1, 8, 8), 10, scale=0.25, reference=reference, rate=0.01, knn_k=5, **common)
    if name == "some":
        from art_some.models.multihead import digits_cnn_multihead

        torch.manual_seed(0)
        return cls(digits_cnn_multihead(num_heads=2), LOSS, (1, 8, 8), 10, scale=0.25, **common)
    return cls(model, LOSS, (1, 8, 8), 10, scale=0.25, **common)


def _registered_estimators():
    from art_some.plugins import registered

    return sorted(registered("estimators"))


@pytest.mark.parametrize("name", _registered_estimators())
def test_every_registered_estimator_survives_the_audit(name, trained_digits_classifier, digits):
    from art_some.plugins import registered

    (x_train, _), (x, y) = digits
    est = _tiny(name, registered("estimators")[name], trained_digits_classifier, x_train[:300])
    result = audit(est, x[:5], y[:5], attacks=["pgd", "deepfool"], n=400, eps=(0.05, 0.75),
                   budgets={"pgd": {"max_iter": 4}, "deepfool": {"max_iter": 5}}, verify_n=400, progress=False)
    assert len(result.records) == 5 and set(result.records[0]["attacks"]) == {"pgd", "deepfool"}
    # Not vacuous: certificates reach beyond the smallest budget, and the attacks do flip the smoothed classifier.
    assert any(r["radius"] > 0.05 for r in result.records)
    assert any(o["flipped"] for r in result.records for o in r["attacks"].values())
    for record in result.records:
        for outcome in record["attacks"].values():
            assert outcome is not None and (outcome["distance"] is not None) == outcome["flipped"]
    # Each confirmed flip inside a certified radius has probability about alpha + verify_alpha = 0.002 under a
    # sound certificate: with 5 inputs x 2 attacks (< 0.02 expected in all), the audit must find none.
    assert result.violations == []
    curves = result.curves()
    assert np.all(curves["best"] >= curves["certified"] - 1e-12)


def test_resume_and_errors(tmp_path, trained_digits_classifier, digits):
    _, (x, y) = digits
    clf = trained_digits_classifier
    kwargs = dict(attacks=["deepfool"], n=200, verify_n=200, budgets={"deepfool": {"max_iter": 3}}, progress=False,
                  output_dir=tmp_path, batch_size=2)
    first = audit(clf, x[:2], y[:2], **kwargs)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    whole = audit(clf, x[:4], y[:4], **kwargs)  # resumes: the first two records are kept, two are added
    assert (tmp_path / "audit.jsonl").read_text().splitlines()[:2] == lines and len(whole.records) == 4
    fresh = audit(clf, x[:4], y[:4], **{**kwargs, "output_dir": tmp_path / "fresh"})
    assert [r["attacks"] for r in whole.records] == [r["attacks"] for r in fresh.records]
    assert first.records == whole.records[:2]
    with pytest.raises(ValueError, match="other settings"):
        audit(clf, x[:4], y[:4], **{**kwargs, "verify_n": 300})
    with pytest.raises(ValueError, match="unknown attack"):
        audit(clf, x[:1], y[:1], attacks=["nope"])
    with pytest.raises(ValueError, match="budgets"):
        audit(clf, x[:1], y[:1], attacks=["pgd"], budgets={"deepfool": {}})
    with pytest.raises(ValueError, match="eps"):
        audit(clf, x[:1], y[:1], attacks=["pgd"], eps=(0.0,))


def test_attack_recipes_are_registered_plugins_and_accept_the_estimator(trained_digits_classifier):
    from art.attacks.attack import EvasionAttack

    from art_some.plugins import entries

    registry = entries("attacks")
    assert {"pgd", "apgd", "square", "carlini", "deepfool", "hopskipjump", "boundary"} <= set(registry)
    assert {name for name, e in registry.items() if e.meta["bounded"]} >= {"pgd", "apgd", "square"}
    for name, entry in registry.items():
        attack = entry.obj(trained_digits_classifier, eps=0.5)
        assert isinstance(attack, EvasionAttack), name  # ART accepted the estimator's capabilities
        # ... and attacks the smoothed classifier itself (APGD with a named loss would swap in the base network),
        # through a view whose predict gives the vote counts (ART's one-hot rows read as probabilities to APGD).
        inner = attack._attack if isinstance(getattr(attack, "_attack", None), EvasionAttack) else attack
        assert type(inner.estimator) is type(trained_digits_classifier), name
        assert inner.estimator._model is trained_digits_classifier._model, name  # the same network, a shallow copy
        assert inner.estimator.predict_output == "counts", name
    view = attack_view(trained_digits_classifier)
    assert vote_counts(view) is view  # the audit's view already gives the counts: attacked as it is
    assert trained_digits_classifier.predict_output == "onehot"  # the caller's estimator is left as it was


def test_all_recipes_run_through_the_audit_and_abstentions_do_not_read_as_class_zero(trained_digits_classifier,
                                                                                     digits, monkeypatch):
    _, (x, y) = digits
    clf = trained_digits_classifier
    names = ["apgd", "square", "carlini", "hopskipjump", "boundary"]
    budgets = {"apgd": {"max_iter": 3}, "square": {"max_iter": 5}, "carlini": {"max_iter": 3,
               "binary_search_steps": 2}, "hopskipjump": {"max_iter": 2, "max_eval": 50, "init_eval": 10},
               "boundary": {"max_iter": 5, "num_trial": 3, "sample_size": 3}}
    seen = []
    predict = type(clf).predict

    def spy(self, *args, **kwargs):  # what every estimator the attacks call predict on says about abstaining
        seen.append(self.predict_abstains)
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(type(clf), "predict", spy)
    result = audit(clf, x[:3], y[:3], attacks=names, n=200, eps=(0.5, 1.5), budgets=budgets, verify_n=300,
                   progress=False)
    assert seen and not any(seen) and clf.predict_abstains  # attacks saw no abstentions; restored afterwards
    assert all(set(r["attacks"]) == set(names) for r in result.records) and result.violations == []


def test_evaluate_command_on_the_demo_model_writes_the_reports(tmp_path):
    from art_some.cli import cli

    demo = CliRunner().invoke(cli, ["demo", "--output-dir", str(tmp_path / "demo"), "--epochs", "2", "--n", "200",
                                    "--max-inputs", "3"])
    assert demo.exit_code == 0, demo.output
    args = ["evaluate", "--model", str(tmp_path / "demo" / "model.safetensors"), "--n", "200", "--verify-n", "200",
            "--max-inputs", "3", "--attack", "pgd", "--attack", "square", "--eps", "0.5,1", "--budget",
            "pgd.max_iter=3", "--budget", "square.max_iter=5", "--device", "cpu", "--output-dir", str(tmp_path / "a")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "empirical, best of all attacks" in result.output
    summary = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert summary["inputs"] == 3 and set(summary["curves"]) == {"certified", "pgd", "square", "best"}
    assert (tmp_path / "a" / "audit.png").stat().st_size > 1000
    again = CliRunner().invoke(cli, args)  # everything recorded: resumes to the same report
    assert again.exit_code == 0 and json.loads((tmp_path / "a" / "audit.json").read_text()) == summary
    bad = CliRunner().invoke(cli, [*args[:-2], "--output-dir", str(tmp_path / "b"), "--budget", "nodot=3"])
    assert bad.exit_code != 0 and "attack.name=value" in bad.output


def test_violations_of_a_sound_certificate_occur_at_most_at_rate_alpha():
    # Statistical: a linear binary model, every input at exact distance 0.3 from the boundary, certified with a
    # loose alpha = 0.2 and n = 50 so that the certificate sometimes (rarely) overreaches. PGD at budget 0.31 lands
    # just past the boundary; 40k fresh draws confirm the flip. Violations are exactly the certificates that failed:
    # some must be found, at a rate within alpha (+3 s.e.).
    from tests.conftest import make_classifier

    rng = np.random.default_rng(3)
    w = rng.normal(size=64)
    unit = w / np.linalg.norm(w)
    count = 200
    u = rng.uniform(0.3, 0.7, size=(count, 64))
    x = u - (u @ unit)[:, None] * unit + 0.3 * unit  # w.x = 0.3 ||w||: distance 0.3 to the boundary w.x = 0
    clf = make_classifier(Linear2(w, 0.0), (1, 8, 8), 2, scale=0.25, sample_size=10, alpha=0.2, gradient_samples=4,
                          noise_batch_size=50_000, clip_values=None)
    result = audit(clf, x.reshape(count, 1, 8, 8).astype(np.float32), np.ones(count, dtype=int), attacks=["pgd"],
                   n=50, eps=(0.31,), budgets={"pgd": {"max_iter": 5, "batch_size": 256}}, verify_n=40_000,
                   batch_size=count, progress=False)
    assert all(r["attacks"]["pgd"]["flipped"] for r in result.records if r["clean_class"] == 1)
    certified = sum(r["predict"] == 1 for r in result.records)
    rate = len(result.violations) / count
    assert certified > 150 and 0 < len(result.violations)
    assert rate <= 0.2 + 3 * np.sqrt(0.2 * 0.8 / count)
    # Exactly the certificates whose radius exceeds the attack's distance were reported.
    assert {v["idx"] for v in result.violations} == {r["idx"] for r in result.records if r["radius"] > 0.31 + 1e-6}
