"""
Noise as a part of every estimator: the estimator's noise is what certify, predict, the gradients and the trainers
draw; records and headers say the noise and the norm; rules and trainers written for one noise refuse another in
one line; the audit measures and attacks in the certificate's norm.
"""
import json

import numpy as np
import pytest
import torch

from art_some.runs.records import read_header, read_jsonl
from tests.conftest import Linear2, make_classifier
from tests.runs.test_runner import CERTIFY, _checkpoint, _cli

LOSS = torch.nn.CrossEntropyLoss()


def linear(noise, scale=0.5, **kwargs):
    w = np.zeros(4)
    w[0] = 1.0
    return make_classifier(Linear2(w, 0.0), (4,), 2, scale=scale, noise=noise, sample_size=50, clip_values=None,
                           **kwargs)


def test_the_noise_and_norm_are_estimator_parameters_and_reach_every_record():
    clf = linear("uniform")
    assert clf.radius_norm == "l1" and clf.get_params()["noise"] == "uniform"
    x = np.zeros((3, 4), np.float32)
    x[:, 0] = 0.5
    result = clf.certify_detailed(x, n=2000)
    assert result.extra["noise"] == "uniform" and result.extra["norm"] == "l1"
    assert (result.radius <= 0.5).all() and (result.radius > 0.3).all()
    clf.set_params(noise="gaussian", norm="linf")
    assert clf.radius_norm == "linf"
    with pytest.raises(ValueError, match="laplace noise certifies radii in l1, not norm='linf'"):
        clf.set_params(noise="laplace")
    assert clf.noise == "gaussian" and clf.norm == "linf"  # a refused change leaves the estimator as it was
    with pytest.raises(ValueError, match="unknown noise_model 'cauchy'; registered: gaussian, laplace, uniform"):
        linear("cauchy")


def test_predict_and_the_gradients_draw_the_estimators_noise():
    clf = linear("uniform", scale=0.2)
    eps = clf._gradient_noise((10_000,), "cpu", clf.make_noise(0.2))
    assert float(eps.abs().max()) <= np.sqrt(3) + 1e-6  # unit-variance uniform draws
    # PREDICT: an input at 0.4 > lambda = 0.35 from the boundary never crosses it under uniform noise, always under
    # Gaussian noise at the same sigma now and then.
    x = np.zeros((20, 4), np.float32)
    x[:, 0] = 0.4
    assert (clf.predict_counts(x)[:, 1] == 50).all()
    clf.set_params(noise="gaussian")
    assert (clf.predict_counts(x)[:, 0] > 0).any()


def test_rules_and_trainers_written_for_gaussian_noise_refuse_another(digits):
    from art_some import DenoisedMultiScaleClassifier, SmoothReduceClassifier
    from art_some.models import DigitsCNN
    from art_some.models.diffusion import IdentityDenoiser
    from art_some.trainers import GaussianAugmentationTrainer, MACERTrainer, SmoothAdvTrainer

    model = DigitsCNN()
    with pytest.raises(ValueError, match="holds for gaussian noise in l2 only, not for laplace noise in l1"):
        SmoothReduceClassifier(model, LOSS, (1, 8, 8), 10, device_type="cpu", scale=0.25, noise="laplace",
                               patches={"layout": "grid", "size": 6, "stride": 2}, patch_resize=8)
    cascade = DenoisedMultiScaleClassifier(model, None, (1, 8, 8), 10, device_type="cpu", denoiser=IdentityDenoiser(),
                                           sigmas=(0.5, 0.25))
    with pytest.raises(ValueError, match="the cascade's certificate holds for gaussian noise in l2 only"):
        cascade.set_params(noise="uniform")
    clf = make_classifier(model, (1, 8, 8), 10, noise="uniform", scale=0.25,
                          optimizer=torch.optim.SGD(model.parameters(), lr=0.01))
    for trainer in (MACERTrainer, SmoothAdvTrainer):
        with pytest.raises(ValueError, match=f"{trainer.__name__} is written for gaussian noise, not the "
                                             "classifier's uniform noise"):
            trainer(clf)
    # Noise augmentation trains with the classifier's noise (as Yang et al. train for each family).
    trainer = GaussianAugmentationTrainer(clf, seed=0)
    drawn = trainer.draw_noise(torch.zeros((500, 1, 8, 8)), m=1)
    assert float(drawn.abs().max()) <= 0.25 * np.sqrt(3) + 1e-6
    (x, y), _ = digits
    trainer.fit(x[:64], y[:64], batch_size=32, nb_epochs=1)


def test_the_command_line_certifies_with_a_noise_and_records_it(tmp_path):
    model = _checkpoint(tmp_path)
    out = tmp_path / "u.jsonl"
    result = _cli("certify", "--model", model, *CERTIFY, "--noise", "uniform", "--output", out)
    assert result.exit_code == 0, result.output
    assert "L1 r" in result.output  # the table says which norm its radii are in
    records = read_jsonl(out)
    assert all(r["noise"] == "uniform" and r["norm"] == "l1" for r in records)
    header = read_header(out)
    assert header["estimator_params"]["noise"] == "uniform"
    # Resuming with another noise is another run.
    again = _cli("certify", "--model", model, *CERTIFY, "--noise", "laplace", "--output", out)
    assert again.exit_code != 0 and "noise" in again.output
    bad = _cli("certify", "--model", model, *CERTIFY, "--noise", "laplace", "--norm", "l2", "--output",
               tmp_path / "bad.jsonl")
    assert bad.exit_code != 0 and "laplace noise certifies radii in l1, not norm='l2'" in bad.output
    assert not (tmp_path / "bad.jsonl").exists()
    report = _cli("report", out)
    assert report.exit_code == 0 and "uniform" in report.output and "L1 r" in report.output
    listed = _cli("plugins")
    assert all(name in listed.output for name in ("noise_models", "gaussian", "laplace", "uniform"))


def test_train_records_its_noise_and_certify_smooths_with_it(tmp_path):
    out = tmp_path / "run"
    trained = _cli("train", "--method", "gaussian", "--model", "digits_cnn", "--noise", "laplace", "--epochs", 1,
                   "--device", "cpu", "--output-dir", out)
    assert trained.exit_code == 0, trained.output
    certified = _cli("certify", "--model", out / "model.safetensors", *CERTIFY, "--output", tmp_path / "r.jsonl")
    assert certified.exit_code == 0, certified.output
    assert {r["noise"] for r in read_jsonl(tmp_path / "r.jsonl")} == {"laplace"}
    refused = _cli("train", "--method", "macer", "--model", "digits_cnn", "--noise", "laplace", "--epochs", 1,
                   "--device", "cpu", "--output-dir", tmp_path / "macer")
    assert refused.exit_code != 0 and "MACERTrainer is written for gaussian noise" in refused.output


def _inflated(clf):
    """``clf`` with its uniform noise's L1 radii multiplied by 20: a deliberately unsound certificate."""
    from art_some.core.noise import UniformNoise

    class Inflated(UniformNoise):
        def _radius(self, p):
            return 20.0 * super()._radius(p)

    clf.make_noise = lambda sigma, dimension=None: Inflated(sigma, dimension=dimension)
    return clf


@pytest.mark.slow
def test_an_l1_audit_never_breaks_uniform_noise_certificates_and_catches_an_inflated_l1_rule(
        trained_digits_classifier, digits, tmp_path):
    from art_some.evaluation.audit import audit

    _, (x, y) = digits
    x, y = x[:12], y[:12]

    def estimator():
        return make_classifier(trained_digits_classifier.model, (1, 8, 8), 10, noise="uniform", scale=0.25,
                               sample_size=50, noise_batch_size=4000, gradient_samples=8)

    settings = dict(attacks=["pgd"], n=2000, eps=(0.5, 1.0, 2.0, 4.0), verify_n=2000,
                    budgets={"pgd": {"max_iter": 10}}, progress=False)
    sound = audit(estimator(), x, y, output_dir=tmp_path / "sound", **settings)
    assert sound.norm == "l1" and sound.violations == []
    assert any(r["predict"] >= 0 and r["radius"] > 0 for r in sound.records)
    flipped = [r["attacks"]["pgd"] for r in sound.records if r["attacks"]["pgd"]["flipped"]]
    assert flipped  # the L1 attack does break some inputs, outside their certified radii
    for r in sound.records:  # distances are L1 distances, within the L1 budget that found them
        outcome = r["attacks"]["pgd"]
        if outcome["flipped"]:
            assert outcome["distance"] <= outcome["eps"] * (1 + 1e-4)
    assert "L1 radius" in (tmp_path / "sound" / "audit.md").read_text()
    inflated = audit(_inflated(estimator()), x, y, **settings)
    assert inflated.violations
    # An attack that does not run in L1 is refused in one line.
    with pytest.raises(ValueError, match="the square attack runs in l2/linf, but the certificates are l1 radii"):
        audit(estimator(), x, y, attacks=["square"], progress=False)
    config = json.loads((tmp_path / "sound" / "audit_config.json").read_text())
    assert config["norm"] == "l1" and config["estimator_params"]["noise"] == "uniform"


def test_an_audit_without_named_attacks_runs_those_of_the_certificates_norm(tmp_path):
    from art_some.evaluation.audit import DEFAULT_ATTACKS, default_attacks
    from art_some.plugins import meta

    for norm, names in DEFAULT_ATTACKS.items():
        assert all(norm in meta("attacks", name)["norms"] for name in names)
    assert default_attacks("l1") == ["pgd", "apgd"]
    model = _checkpoint(tmp_path)
    result = _cli("evaluate", "--model", model, "--n0", 20, "--n", 60, "--max-inputs", 2, "--device", "cpu",
                  "--noise", "uniform", "--verify-n", 50, "--eps", "1", "--budget", "pgd.max_iter=2",
                  "--budget", "apgd.max_iter=2", "--output-dir", tmp_path / "audit")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "audit" / "audit_config.json").read_text())
    assert config["attacks"] == ["pgd", "apgd"] and config["norm"] == "l1"
