"""
The attack-vs-certificate audit: certify each input, run ART's attacks against the *smoothed* classifier, confirm
every adversarial point with fresh noise, and compare.

- Certified accuracy at r (a lower bound on robust accuracy, up to alpha) against the empirical robust accuracy
  at r per attack and for the best of all attacks (an upper bound): the gap between them is what certification
  leaves on the table, or what the attacks miss.
- A **violation** is an input certified with class c and radius R, and an attack point x' with ||x' - x|| < R at
  which fresh Monte-Carlo votes show that another class beats c: a two-sided binomial test of the best other class
  against c at ``verify_alpha / (K - 1)`` (Bonferroni over the K - 1 other classes), or for tallies of several votes
  per draw (Smooth-Reduce's vote averaging) a Hoeffding test on the per-draw difference. A sound certificate gives
  a violation with probability at most alpha + T verify_alpha per input, T the number of attack points tested (one
  per attack and budget run). Each violation is saved with the input, the attack point, the counts and the noise
  keys, so :func:`replay_violation` reproduces it.

| Paper link: https://arxiv.org/abs/1906.04584
"""
from __future__ import annotations

import csv
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from art_some.core.noise import NORM_LABELS, lp_norm, seed_for
from art_some.core.stats import binomial_test_two_sided
from art_some.core.streams import AUDIT, AUDIT_BUDGETS, AUDIT_KEY_BASE, INDEX_LIMIT, attack_run_key, audit_key
from art_some.estimators.protocol import check_estimator
from art_some.evaluation.plots import plot_audit
from art_some.runs.header import RunMismatchError, input_hash, mismatch_message, run_header
from art_some.runs.metrics import certified_accuracy, radius_grid
from art_some.runs.progress import progress as progress_of
from art_some.runs.records import NOT_COMPARED, RecordWriter, certificate_fields, resume_note
from art_some.runs.shards import Layout, check_shard_count, merge_shards, merged_before, shard_plan

# Verification noise is keyed far above any data-set index (art_some.core.streams.audit_key), so it is fresh:
# independent of the certification and prediction draws of every input, and different for every verification call.
FRESH_BASE = AUDIT_KEY_BASE
DEFAULT_EPS = (0.125, 0.25, 0.5, 1.0, 2.0)
AUDIT_STAGE = AUDIT  # numpy's global seed for ART's attacks, per attack run


@dataclass
class AuditResult:
    """Per-input records (certificate + per-attack outcome), aggregate curves and the violations."""

    records: list[dict]
    attacks: list[str]
    radii: np.ndarray
    violations: list[dict] = field(default_factory=list)
    norm: str = "l2"  # the norm of the radii, distances and budgets

    def curves(self) -> dict[str, np.ndarray]:
        """Certified accuracy and the empirical robust accuracy per attack and for the best of all, at ``radii``."""
        out = {"certified": certified_accuracy(self.records, self.radii)}
        for name in [*self.attacks, "best"]:
            out[name] = empirical_robust_accuracy(self.records, self.radii, None if name == "best" else name)
        return out

    def summary(self) -> dict:
        """The figures of the report: curves, the gap (best attack minus certified), violations and their rate."""
        curves = self.curves()
        # A certificate says the prediction cannot change, right or wrong: violations count over all certified
        # inputs; certified accuracy counts only the correct ones.
        certified = sum(r["predict"] >= 0 and r["radius"] > 0 for r in self.records)
        correct = sum(r["predict"] >= 0 and r["radius"] > 0 and r["predict"] == r["label"] for r in self.records)
        violated = len({v["idx"] for v in self.violations})
        return {
            "inputs": len(self.records), "certified_inputs": int(certified), "certified_correct_inputs": int(correct),
            "radii": self.radii.tolist(),
            "curves": {k: np.round(100 * v, 2).tolist() for k, v in curves.items()},
            "gap": np.round(100 * (curves["best"] - curves["certified"]), 2).tolist(),
            "violations": len(self.violations), "violated_inputs": violated,
            "violation_rate": violated / certified if certified else 0.0,
        }


def empirical_robust_accuracy(records: Sequence[dict], radii, attack: str | None = None) -> np.ndarray:
    """
    Fraction of inputs whose smoothed prediction is the label and that no (confirmed) attack point within L2
    distance r changed, for each r; ``attack=None`` takes the best (smallest) over all attacks.
    """
    if not records:
        return np.zeros(len(radii))
    correct = np.array([bool(r["clean_correct"]) for r in records])
    broken_at = np.array([_broken_at(r, attack) for r in records])
    return np.array([np.mean(correct & ~(broken_at <= r)) for r in radii])


def _broken_at(record: dict, attack: str | None) -> float:
    outcomes = record["attacks"].values() if attack is None else [record["attacks"].get(attack, {})]
    distances = [o["distance"] for o in outcomes if o.get("flipped")]
    return min(distances) if distances else np.inf


# The attacks an audit runs when none are named, by the norm of the certificates it checks.
DEFAULT_ATTACKS = {"l2": ("pgd", "deepfool"), "l1": ("pgd", "apgd"), "linf": ("pgd", "square")}


def default_attacks(norm: str) -> list[str]:
    """The attacks an audit of certificates in ``norm`` runs by default (:data:`DEFAULT_ATTACKS`)."""
    return list(DEFAULT_ATTACKS[norm])


def audit(estimator, x, y, attacks: Sequence[str] | None = None, *, n: int = 1000, n0: int | None = None,
          alpha: float | None = None, eps: Sequence[float] = DEFAULT_EPS, budgets: dict | None = None,
          verify_n: int = 1000, verify_alpha: float = 0.001, indices=None, radii=None, output_dir=None,
          batch_size: int = 16, progress: bool = True, run_info: dict | None = None, echo=None,
          shard: tuple[int, int] | None = None) -> AuditResult:
    """
    Audit ``estimator``'s certificates on ``x`` against the registered attack recipes ``attacks``.

    Per input: CERTIFY (class c, radius R); the clean smoothed class (c, or the selection votes' top class where
    CERTIFY abstains); for each attack the smallest confirmed adversarial distance (budgeted attacks are run on the
    ``eps`` grid, smallest first; minimal-perturbation attacks once); confirmation by ``verify_n`` fresh draws at
    the attack point and a binomial test of the best other class against c at ``verify_alpha``.

    :param estimator: A smoothed estimator (any registered one) with ``certify_detailed`` and ``predict_counts``.
    :param x: Inputs ``(N, *input_shape)``; ``y``: labels.
    :param attacks: Registered attack recipe names (``art-some plugins`` lists them); default
                    :func:`default_attacks` of the certificates' norm.
    :param n: Estimation draws of CERTIFY; ``n0``, ``alpha`` default to the estimator's.
    :param eps: L2 budgets of the bounded attacks.
    :param budgets: Per attack, keyword arguments of its recipe (e.g. ``{"pgd": {"max_iter": 50}}``).
    :param verify_n: Fresh draws per attack point.
    :param verify_alpha: Level of the binomial test that confirms a flip.
    :param indices: Data-set indices of the inputs (key their certification noise; default 0..N-1).
    :param radii: Radii of the tables (default certify's table radii, 0 to 2 in steps of 0.25, continued in those
                  steps to the largest radius or budget).
    :param output_dir: If given, per-input records are appended to ``audit.jsonl`` there (resumed when present),
                       violations saved under ``violations/`` and the reports written by :func:`write_reports`.
    :param batch_size: Inputs per chunk (each chunk's records are written when it is done).
    :param progress: Show a progress bar (it counts inputs).
    :param echo: Where the line saying that an audit resumes goes (default: standard error when ``progress``).
    :param run_info: JSON-able entries for the audit's header that only the caller knows (the command line's data
                     set, split and model reference; a ``source`` entry is recorded, not compared).
    :param shard: ``(i, k)``: audit only shard i of k, every k-th chunk of ``batch_size`` inputs from the i-th (whole
                  chunks, so that each chunk's attacks run as in an audit of everything); the header records the
                  shard and the whole index list, and :func:`merge_audits` combines the shards' folders.

    With ``output_dir``, ``audit_config.json`` beside ``audit.jsonl`` is the records' header
    (:func:`~art_some.runs.header.run_header`: these settings, the estimator's parameters and weights hash,
    versions, ``run_info``); resuming with anything else, or with other inputs at recorded indices (each record
    keeps its input's hash), is refused, and so is a second audit writing the same folder at the same time.
    """
    from art_some.plugins import entries

    check_estimator(estimator, "the audit")
    attacks = default_attacks(estimator.radius_norm) if attacks is None else list(attacks)
    registry = entries("attacks")
    unknown = [a for a in attacks if a not in registry]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; registered: {', '.join(sorted(registry))}")
    norm = estimator.radius_norm  # distances and budgets are in the certificate's own norm
    for name in attacks:
        if norm not in attack_norms(registry[name]):
            fitting = sorted(a for a in registry if norm in attack_norms(registry[a]))
            raise ValueError(f"the {name} attack runs in {'/'.join(attack_norms(registry[name]))}, but the "
                             f"certificates are {norm} radii; attacks registered for {norm}: {', '.join(fitting)}")
    budgets = dict(budgets or {})
    if set(budgets) - set(attacks):
        raise ValueError(f"budgets names attacks that are not run: {sorted(set(budgets) - set(attacks))}")
    if int(verify_n) != verify_n or verify_n < 1 or not 0 < verify_alpha < 1:
        raise ValueError(f"need verify_n >= 1 and verify_alpha in (0, 1), got {verify_n!r}, {verify_alpha!r}")
    eps = sorted(float(e) for e in eps)
    if not eps or eps[0] <= 0:
        raise ValueError(f"eps must be positive {norm} budgets, got {eps!r}")
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    indices = np.arange(len(x)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= INDEX_LIMIT) or len(eps) >= AUDIT_BUDGETS:
        raise ValueError(f"indices must lie in [0, 2**30) and eps hold fewer than {AUDIT_BUDGETS} budgets (they key "
                         "fresh noise)")
    if not estimator.radii_in_input_space:
        raise ValueError("the audit measures distances in input space, but this estimator's radii are in another "
                         "space (e.g. Smooth-Reduce's resized space: use radius_space='input', and no resize with "
                         "unsound_paper_radius)")
    if "square" in attacks and estimator.clip_values is None:
        raise ValueError("the square attack needs the estimator's clip_values")
    for name, options in budgets.items():
        if "eps" in options:
            raise ValueError(f"budgets[{name!r}] sets eps: give the budgets in eps=...")
    _check_budgets(estimator, registry, list(attacks), budgets, eps, norm)
    out = None if output_dir is None else Path(output_dir)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    mine = [list(range(s, min(s + batch_size, len(x)))) for s in range(0, len(x), batch_size)]  # the chunks
    plan = {}
    if shard is not None:
        plan = shard_plan(indices.tolist(), shard, {int(i): input_hash(x_i) for i, x_i in zip(indices, x)})
        check_shard_count(plan["shard"][1], len(mine), f"chunks of {batch_size} inputs")
        mine = mine[plan["shard"][0]::plan["shard"][1]]
        plan["shard_inputs"] = sum(map(len, mine))
    mine = [j for chunk in mine for j in chunk]
    writer = None
    if out is not None:
        header = run_header(
            estimator, "audit", attacks=list(attacks), eps=eps, budgets=budgets, n=n, n0=n0, alpha=alpha,
            verify_n=int(verify_n), verify_alpha=float(verify_alpha),
            certificate={k: str(v) for k, v in estimator.certificate_info().items()},
            **({} if norm == "l2" else {"norm": norm}),
            # The chunk decides the attacks' batches, so the records: part of every audit's header.
            run_info=run_info, plan={"chunk": int(batch_size), **plan})
        writer = _open_records(out, header, x, indices)
    state = _Audit(estimator, list(attacks), registry, budgets, eps, int(verify_n), float(verify_alpha), out)
    wanted = {int(indices[j]) for j in mine}
    records = [r for r in writer.records if r["idx"] in wanted] if writer else []
    try:
        todo = [j for j in mine if writer is None or int(indices[j]) not in writer.done]
        if writer is not None and writer.records:
            resume_note(echo, progress, writer.path, len(mine) - len(todo), len(mine), "audited")
        chunks = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
        # The bar counts inputs, not chunks: a chunk of attacks can take minutes.
        with progress_of(len(mine), len(mine) - len(todo), enabled=progress,
                         desc="audit" if shard is None else f"audit shard {plan['shard'][0]}/{plan['shard'][1]}",
                         position=0 if shard is None else plan["shard"][0]) as bar:
            for chunk in chunks:
                for j, record in zip(chunk, state.run(x[chunk], y[chunk], indices[chunk], n=n, n0=n0,
                                                      alpha=alpha)):
                    record["input_sha256"] = input_hash(x[j])
                    records.append(record)
                    if writer is not None:
                        writer.append(record)
                bar.update(len(chunk))
        records.sort(key=lambda r: r["idx"])
        result = _result(records, list(attacks), eps, radii, norm)
        if out is not None:
            write_reports(result, out)  # still under the records' lock: one audit writes this folder at a time
    except BaseException:
        if writer is not None:
            writer.discard_if_empty()  # a header without records would block the corrected rerun
        raise
    finally:
        if writer is not None:
            writer.close()
    return result


def _result(records, attacks, eps, radii=None, norm: str = "l2") -> AuditResult:
    """
    The audit's result from its records; its tables' radii by default those of certify's table (0 to 2 in steps of
    0.25), continued in the same steps to the largest radius or budget (:func:`~art_some.runs.metrics.radius_grid`).
    """
    violations = [v for r in records for v in r.get("violations", [])]
    if radii is None:  # certify's table radii, continued to the largest radius or budget
        radii = radius_grid(max([r["radius"] for r in records] + list(eps)))
    return AuditResult(records, list(attacks), np.asarray(radii, dtype=np.float64), violations, norm)


# Where an audit keeps its records: audit.jsonl, its header in audit_config.json beside it.
AUDIT_FOLDER = Layout(
    records="audit.jsonl", header="audit_config.json", noun="folders",
    missing="{} is not an audit folder (it needs audit.jsonl and audit_config.json)",
    exists="{} holds an audit: merge writes a new folder (give another output or remove it)",
    not_merged="{} holds an audit that is not this run's merged audit; give another --output-dir or remove it")


def merge_audits(folders: Sequence[str | os.PathLike], output_dir: str | os.PathLike) -> AuditResult:
    """
    Merge the folders of a sharded audit (``audit(..., shard=(i, k))``, ``art-some evaluate --shard``, or the ranks
    of a ``torchrun`` run) into ``output_dir``: ``audit.jsonl``, its ``audit_config.json``, the reports and the
    saved violations, after the checks of :func:`~art_some.runs.shards.merge_shards` (one run, every shard once
    and finished, no input twice, the run's index list).
    """
    import shutil

    out, results = Path(output_dir), []

    def finish(header, records, where):  # into the staged folder, which then becomes output_dir in one step
        for folder in map(Path, folders):
            for saved in sorted((folder / "violations").glob("*.npz")):
                (where / "violations").mkdir(exist_ok=True)
                shutil.copy2(saved, where / "violations" / saved.name)
        results.append(_result(records, header["attacks"], header["eps"], norm=header.get("norm", "l2")))
        write_reports(results[0], where)

    merge_shards(folders, out, AUDIT_FOLDER, finish=finish)
    return results[0]


def merged_audit_before(output_dir, first_shard) -> AuditResult:
    """The result of an ``output_dir`` merged by an earlier run, if that run is this one (else a clear error)."""
    records = merged_before(output_dir, first_shard, AUDIT_FOLDER)
    shard = json.loads((Path(first_shard) / "audit_config.json").read_text())
    return _result(records, shard["attacks"], shard["eps"], norm=shard.get("norm", "l2"))


def attack_norms(entry) -> tuple[str, ...]:
    """The norms a registered attack recipe runs in (``("l2",)`` when its registration says none)."""
    return tuple(entry.meta.get("norms", ("l2",)))


def build_attack(entry, estimator, eps, options: dict, norm: str):
    """The attack of recipe ``entry`` against ``estimator`` at budget ``eps`` in ``norm`` (an L2 recipe, as every
    recipe written before norms, is called without one)."""
    return entry.obj(estimator, eps=eps, **({} if norm == "l2" else {"norm": norm}), **options)


def _check_budgets(estimator, registry, attacks, budgets, eps, norm) -> None:
    """
    Refuse budget options an attack recipe does not take, and build each attack once with its budget (ART checks
    its arguments then), so that a typo is a one-line error before any file is written, not a failure mid-run.
    """
    import inspect

    for name in attacks:
        options = budgets.get(name, {})
        params = inspect.signature(registry[name].obj).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            takes = sorted(set(list(params)[1:]) - {"eps", "norm"})
            unknown = sorted(set(options) - set(takes))
            if unknown:
                raise ValueError(f"budget {name}.{unknown[0]} is not an option of the {name} attack; it takes "
                                 f"{', '.join(takes) or 'none'}")
    # Built as the run builds them, on the attacks' view: some constructors call predict (APGD), which must not see
    # abstentions.
    attacked = attack_view(estimator)
    for name in attacks:
        options = budgets.get(name, {})
        try:
            build_attack(registry[name], attacked, eps[0] if registry[name].meta.get("bounded") else None, options,
                         norm)
        except (TypeError, ValueError) as err:
            raise ValueError(f"the {name} attack rejected its budget {options}: {err}") from None


def attack_view(estimator):
    """
    The estimator as the attacks see it, leaving the caller's untouched: a shallow copy (the same model, rule and
    noise) whose ``predict`` never abstains (an all-zero abstain row would read as class 0) and returns the vote
    counts (a signal for score-based attacks such as Square, where one-hot rows are flat), with gradient noise of
    its own (see ``reseed_gradients``).
    """
    import copy

    view = copy.copy(check_estimator(estimator, "the audit"))
    view.predict_abstains = False
    view.predict_output = "counts"
    view.reseed_gradients(0)
    return view


def _open_records(out: Path, header: dict, x, indices) -> RecordWriter:
    """
    Open (or resume) ``audit.jsonl`` with its header in ``audit_config.json`` beside it, refusing an audit with
    other settings or other inputs at the recorded indices. The records' lock is taken first, so that two audits
    of one folder cannot both pass the check.
    """
    hint = "use another --output-dir or remove that folder"
    position = {int(idx): j for j, idx in enumerate(indices)}

    def same_inputs(writer):
        changed = writer.changed_input(lambda idx: input_hash(x[position[idx]]) if idx in position else NOT_COMPARED)
        if changed is not None:
            idx, recorded, now = changed
            raise ValueError(f"{out} holds an audit with other settings: its input {idx} has sha256 {recorded}, "
                             f"this run's {now}; {hint}")

    records, config = AUDIT_FOLDER.records_path(out), AUDIT_FOLDER.header_path(out)
    try:
        return RecordWriter(records, header, hint, header_file=config, check=same_inputs)
    except RunMismatchError as err:
        raise ValueError(f"{out} holds an audit with other settings: "
                         + mismatch_message(config, err.differences, hint)) from None


class _Audit:
    """One audit's settings and the fresh-noise counter; :meth:`run` audits a chunk of inputs."""

    def __init__(self, estimator, attacks, registry, budgets, eps, verify_n, verify_alpha, out):
        self.estimator, self.attacks, self.registry, self.budgets = estimator, attacks, registry, budgets
        self.norm = estimator.radius_norm
        self.attacked = attack_view(estimator)  # what the attacks run against; the caller's estimator is not changed
        self.eps, self.verify_n, self.verify_alpha, self.out = eps, verify_n, verify_alpha, out

    def verify(self, x_adv, classes, keys) -> dict:
        """
        Does another class beat ``classes`` at ``x_adv``? Fresh draws (noise keys ``FRESH_BASE + keys``) and the test
        of :func:`confirm_flip`. Returns ``flipped``, ``counts_class``, ``counts_other`` and ``p_value`` arrays.
        """
        counts = verify_counts(self.estimator, x_adv, self.verify_n, audit_key(keys))
        return confirm_flip(counts, classes, self.verify_n, self.verify_alpha)

    def run(self, x, y, indices, *, n, n0, alpha) -> list[dict]:
        est = self.estimator
        cert = est.certify_detailed(x, n=n, n0=n0, alpha=alpha, indices=indices)
        # The clean smoothed prediction: the certified class; where CERTIFY abstains, the label unless fresh draws
        # confirm another class beats it (so the empirical curve stays an upper bound).
        certified = cert.predict >= 0
        clean = np.where(certified, cert.predict, y)
        clean_correct = certified & (cert.predict == y)
        if (~certified).any():
            rows = np.flatnonzero(~certified)
            beaten = self.verify(x[rows], y[rows], indices[rows])["flipped"]
            clean_correct[rows] = ~beaten
        info = est.certificate_info()
        records = [{**certificate_fields(cert, j, y[j], indices[j]), "clean_class": int(clean[j]),
                    "clean_correct": bool(clean_correct[j]), "pA_lower": float(cert.p_lower[j]), "attacks": {},
                    "violations": []} for j in range(len(x))]
        onehot = np.eye(est.nb_classes, dtype=np.float32)[clean]
        for a, name in enumerate(self.attacks):
            entry = self.registry[name]
            best = [None] * len(x)
            runs = self.eps if entry.meta.get("bounded") else [None]
            for e, budget in enumerate(runs):
                open_rows = [j for j in range(len(x)) if best[j] is None]
                if not open_rows:
                    break
                attack = build_attack(entry, self.attacked, budget, self.budgets.get(name, {}), self.norm)
                # One fresh stream per (attack, budget, input).
                keys = attack_run_key(a, e, indices[open_rows])
                x_adv = self.generate(attack, x[open_rows], onehot[open_rows], int(keys[0]))
                test = self.verify(x_adv, clean[open_rows], keys)
                for k, j in enumerate(open_rows):
                    flipped = bool(test["flipped"][k])
                    distance = lp_norm(x_adv[k] - x[j], self.norm)
                    outcome = {"distance": distance if flipped else None, "flipped": flipped, "eps": budget,
                               "tried_distance": distance, "counts_class": int(test["counts_class"][k]),
                               "counts_other": int(test["counts_other"][k]), "p_value": float(test["p_value"][k])}
                    if flipped or budget == runs[-1]:
                        best[j] = outcome
                    if flipped:
                        self.check_violation(records[j], name, x[j], x_adv[k], outcome, int(keys[k]), info)
            for j in range(len(x)):
                records[j]["attacks"][name] = best[j]
        return records

    def generate(self, attack, x, y, stream: int) -> np.ndarray:
        """
        Run one attack with its randomness keyed by ``stream`` (the EOT gradient noise and numpy's global generator,
        which ART's attacks draw from), so a resumed audit repeats exactly what an unbroken one does.
        """
        if callable(getattr(self.attacked, "reseed_gradients", None)):
            self.attacked.reseed_gradients(stream)
        saved = np.random.get_state()
        np.random.seed(seed_for(int(getattr(self.estimator, "seed", 0)), AUDIT_STAGE, stream) % 2**32)
        try:
            with warnings.catch_warnings():
                # The NaN candidates some attacks propose get NaN scores from predict, which rejects them; the audit
                # handles them (below), so the per-call warning would only be noise here.
                warnings.filterwarnings("ignore", message="predict: .* hold NaN or inf", category=RuntimeWarning)
                x_adv = np.asarray(attack.generate(x, y=y), dtype=np.float32)
        finally:
            np.random.set_state(saved)
        # An attack that returns NaN or inf (ART's Square divides by a zero norm on flat inputs) found nothing.
        broken = ~np.isfinite(x_adv.reshape(len(x_adv), -1)).all(axis=1)
        x_adv[broken] = x[broken]
        return x_adv

    def check_violation(self, record, attack, x, x_adv, outcome, key, info) -> None:
        """Record (and save) a confirmed flip strictly inside a certified radius."""
        if record["predict"] < 0 or outcome["distance"] >= record["radius"]:
            return
        violation = {"idx": record["idx"], "attack": attack, "certified_class": record["predict"],
                     "radius": record["radius"], "pA_lower": record["pA_lower"], "distance": outcome["distance"],
                     "eps": outcome["eps"], "counts_class": outcome["counts_class"],
                     "counts_other": outcome["counts_other"], "p_value": outcome["p_value"],
                     "verify_index": int(audit_key(key)), "seed": int(getattr(self.estimator, "seed", 0)),
                     "verify_n": self.verify_n, "verify_alpha": self.verify_alpha, "norm": self.norm,
                     "certificate": {k: str(v) for k, v in info.items()}}
        if self.out is not None:
            folder = self.out / "violations"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"idx{record['idx']}_{attack}.npz"
            arrays = {k: np.asarray(v) for k, v in violation.items() if v is not None and k != "certificate"}
            np.savez(path, x=x, x_adv=x_adv, delta=x_adv - x, **arrays)
            violation["file"] = str(path.relative_to(self.out))
        record["violations"].append(violation)


def confirm_flip(counts: np.ndarray, classes, n: int, alpha: float) -> dict:
    """
    Per row, is there a class that beats ``classes`` at level ``alpha``? One vote per draw (counts summing to n):
    a two-sided binomial test of the best other class b against c at alpha / (K - 1) (Bonferroni over the K - 1
    candidates for b), requiring k_b > k_c. Tallies of P > 1 votes per draw (rows summing to n P): Hoeffding on the
    mean per-draw difference (k_b - k_c) / P, which lies in [-1, 1]: confirmed when it exceeds
    sqrt(2 ln((K - 1) / alpha) / n).
    """
    counts = np.asarray(counts, dtype=np.int64)
    rows = np.arange(len(counts))
    classes = np.asarray(classes)
    k_c = counts[rows, classes]
    others = counts.copy()
    others[rows, classes] = -1
    k_b = others.max(axis=1)
    level = alpha / max(1, counts.shape[1] - 1)
    votes_per_draw = counts.sum(axis=1) / n
    single = np.isclose(votes_per_draw, 1.0) | (counts.sum(axis=1) == 0)
    p_value = np.ones(len(counts))
    if single.any():
        p_value[single] = binomial_test_two_sided(np.maximum(k_b[single], 0), k_c[single])
    tallies = ~single
    if tallies.any():
        gap = (k_b[tallies] - k_c[tallies]) / votes_per_draw[tallies] / n
        p_value[tallies] = np.where(gap > 0, np.exp(-n * np.maximum(gap, 0) ** 2 / 2), 1.0)
    flipped = (k_b > k_c) & (p_value <= level)
    return {"flipped": flipped, "counts_class": k_c, "counts_other": np.maximum(k_b, 0), "p_value": p_value}


def verify_counts(estimator, x, n: int, indices) -> np.ndarray:
    """
    Vote counts at ``x`` from the noise streams ``indices``: the estimator's ``audit_counts`` (an estimator whose
    certificate is about another classifier than its plain votes, such as a cascade, says which).
    """
    return np.asarray(estimator.audit_counts(x, n=n, indices=np.asarray(indices)))


def replay_violation(estimator, path: str | os.PathLike) -> dict:
    """
    Re-run the verification of a saved violation: the same fresh noise keys at the saved attack point. With the same
    estimator, weights and seed the counts are the same bit for bit (``same_counts``); ``confirmed`` says whether
    the flip is confirmed again at the saved level.
    """
    data = np.load(path)
    check_estimator(estimator, "replay_violation")
    if int(data["seed"]) != int(estimator.seed):
        raise ValueError(f"the violation was found with seed {int(data['seed'])}, the estimator has "
                         f"{estimator.seed}: set_params(seed=...) to replay it")
    counts = verify_counts(estimator, data["x_adv"][None].astype(np.float32), int(data["verify_n"]),
                           [int(data["verify_index"])])
    c = int(data["certified_class"])
    test = confirm_flip(counts, [c], int(data["verify_n"]), float(data["verify_alpha"]))
    k_c, k_b = int(test["counts_class"][0]), int(test["counts_other"][0])
    return {"counts_class": k_c, "counts_other": k_b, "p_value": float(test["p_value"][0]),
            "confirmed": bool(test["flipped"][0]),
            "same_counts": (k_c, k_b) == (int(data["counts_class"]), int(data["counts_other"])),
            "distance": lp_norm(data["delta"], str(data["norm"]) if "norm" in data else "l2"),
            "radius": float(data["radius"])}


def write_reports(result: AuditResult, out: str | os.PathLike) -> dict[str, Path]:
    """audit.json (summary + violations), audit.csv (one row per input), audit.md (a table) and audit.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    paths = {k: out / f"audit.{k}" for k in ("json", "csv", "md", "png")}
    paths["json"].write_text(json.dumps({**summary, "violations_list": result.violations}, indent=1))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["idx", "label", "predict", "radius", "clean_class"]
                        + [f"{a}_{k}" for a in result.attacks for k in ("distance", "flipped")] + ["violations"])
        for r in result.records:
            cells = []
            for a in result.attacks:
                o = r["attacks"].get(a) or {}
                cells += ["" if o.get("distance") is None else o["distance"], int(bool(o.get("flipped")))]
            writer.writerow([r["idx"], r["label"], r["predict"], r["radius"], r["clean_class"], *cells,
                             len(r["violations"])])
    paths["md"].write_text(markdown_table(result, summary))
    plot_audit(result, paths["png"])
    return paths


def markdown_table(result: AuditResult, summary: dict | None = None) -> str:
    """Certified vs empirical robust accuracy (%) at each radius, and the violation count."""
    summary = summary or result.summary()
    radii = summary["radii"]
    lines = [f"| accuracy (%) at {NORM_LABELS[result.norm]} radius | " + " | ".join(f"{r:g}" for r in radii) + " |",
             "|---|" + "---|" * len(radii)]
    for name, values in summary["curves"].items():
        names = {"certified": "certified correct", "best": "empirical, best of all attacks"}
        label = names.get(name, f"empirical, {name}")
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines.append("| gap (best attack - certified) | " + " | ".join(f"{v:.1f}" for v in summary["gap"]) + " |")
    lines += ["", f"Inputs: {summary['inputs']}, certified: {summary['certified_inputs']} (right or wrong), "
              f"certified correct: {summary['certified_correct_inputs']}, violations: {summary['violations']} on "
              f"{summary['violated_inputs']} input(s) (rate {summary['violation_rate']:.4f} of certified inputs)."]
    return "\n".join(lines) + "\n"
