"""
The attack-vs-certificate audit: certify each input, run ART's attacks against the *smoothed* classifier, confirm
every adversarial point with fresh noise, and compare.

- Certified accuracy at r (a lower bound on robust accuracy, up to alpha) against the empirical robust accuracy
  at r per attack and for the best of all attacks (an upper bound): the gap between them is what certification
  leaves on the table, or what the attacks miss.
- A **violation** is an input certified with class c and radius R, and an attack point x' with ||x' - x|| < R at
  which fresh Monte-Carlo votes show, by a binomial test at ``verify_alpha``, that another class beats c. A sound
  certificate allows such events only with probability about alpha + verify_alpha per input. Each violation is saved
  with the input, the perturbation, the counts and the noise keys, so :func:`replay_violation` reproduces it.

| Paper link: https://arxiv.org/abs/1906.04584
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from art_some.core.results import RecordWriter, certified_accuracy
from art_some.core.stats import binomial_test_two_sided

# Verification noise is keyed by indices far above any data-set index, so it is fresh: independent of the
# certification and prediction draws of every input, and different for every verification call.
FRESH_BASE = 2**40
DEFAULT_EPS = (0.125, 0.25, 0.5, 1.0, 2.0)


@dataclass
class AuditResult:
    """Per-input records (certificate + per-attack outcome), aggregate curves and the violations."""

    records: list[dict]
    attacks: list[str]
    radii: np.ndarray
    violations: list[dict] = field(default_factory=list)

    def curves(self) -> dict[str, np.ndarray]:
        """Certified accuracy and the empirical robust accuracy per attack and for the best of all, at ``radii``."""
        out = {"certified": certified_accuracy(self.records, self.radii)}
        for name in [*self.attacks, "best"]:
            out[name] = empirical_robust_accuracy(self.records, self.radii, None if name == "best" else name)
        return out

    def summary(self) -> dict:
        """The figures of the report: curves, the gap (best attack minus certified), violations and their rate."""
        curves = self.curves()
        certified = sum(r["predict"] >= 0 and r["radius"] > 0 for r in self.records)
        return {
            "inputs": len(self.records), "certified_inputs": int(certified), "radii": self.radii.tolist(),
            "curves": {k: np.round(100 * v, 2).tolist() for k, v in curves.items()},
            "gap": np.round(100 * (curves["best"] - curves["certified"]), 2).tolist(),
            "violations": len(self.violations),
            "violation_rate": len(self.violations) / certified if certified else 0.0,
        }


def empirical_robust_accuracy(records: Sequence[dict], radii, attack: str | None = None) -> np.ndarray:
    """
    Fraction of inputs whose smoothed prediction is the label and that no (confirmed) attack point within L2
    distance r changed, for each r; ``attack=None`` takes the best (smallest) over all attacks.
    """
    if not records:
        return np.zeros(len(radii))
    correct = np.array([r["clean_class"] == r["label"] for r in records])
    broken_at = np.array([_broken_at(r, attack) for r in records])
    return np.array([np.mean(correct & ~(broken_at <= r)) for r in radii])


def _broken_at(record: dict, attack: str | None) -> float:
    outcomes = record["attacks"].values() if attack is None else [record["attacks"].get(attack, {})]
    distances = [o["distance"] for o in outcomes if o.get("flipped")]
    return min(distances) if distances else np.inf


def audit(estimator, x, y, attacks: Sequence[str] = ("pgd", "deepfool"), *, n: int = 1000, n0: int | None = None,
          alpha: float | None = None, eps: Sequence[float] = DEFAULT_EPS, budgets: dict | None = None,
          verify_n: int = 1000, verify_alpha: float = 0.001, indices=None, radii=None, output_dir=None,
          batch_size: int = 16, progress: bool = True) -> AuditResult:
    """
    Audit ``estimator``'s certificates on ``x`` against the registered attack recipes ``attacks``.

    Per input: CERTIFY (class c, radius R); the clean smoothed class (c, or the selection votes' top class where
    CERTIFY abstains); for each attack the smallest confirmed adversarial distance (budgeted attacks are run on the
    ``eps`` grid, smallest first; minimal-perturbation attacks once); confirmation by ``verify_n`` fresh draws at
    the attack point and a binomial test of the best other class against c at ``verify_alpha``.

    :param estimator: A smoothed estimator (any registered one) with ``certify_detailed`` and ``predict_counts``.
    :param x: Inputs ``(N, *input_shape)``; ``y``: labels.
    :param attacks: Registered attack recipe names (``art-some plugins`` lists them).
    :param n: Estimation draws of CERTIFY; ``n0``, ``alpha`` default to the estimator's.
    :param eps: L2 budgets of the bounded attacks.
    :param budgets: Per attack, keyword arguments of its recipe (e.g. ``{"pgd": {"max_iter": 50}}``).
    :param verify_n: Fresh draws per attack point.
    :param verify_alpha: Level of the binomial test that confirms a flip.
    :param indices: Data-set indices of the inputs (key their certification noise; default 0..N-1).
    :param radii: Radius grid of the curves (default 0 to the largest radius or budget in 17 steps).
    :param output_dir: If given, per-input records are appended to ``audit.jsonl`` there (resumed when present),
                       violations saved under ``violations/`` and the reports written by :func:`write_reports`.
    :param batch_size: Inputs per chunk (each chunk's records are written when it is done).
    :param progress: Show a progress bar.
    """
    from art_some.plugins import entries

    registry = entries("attacks")
    unknown = [a for a in attacks if a not in registry]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; registered: {', '.join(sorted(registry))}")
    budgets = dict(budgets or {})
    if set(budgets) - set(attacks):
        raise ValueError(f"budgets names attacks that are not run: {sorted(set(budgets) - set(attacks))}")
    if int(verify_n) != verify_n or verify_n < 1 or not 0 < verify_alpha < 1:
        raise ValueError(f"need verify_n >= 1 and verify_alpha in (0, 1), got {verify_n!r}, {verify_alpha!r}")
    eps = sorted(float(e) for e in eps)
    if not eps or eps[0] <= 0:
        raise ValueError(f"eps must be positive L2 budgets, got {eps!r}")
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    indices = np.arange(len(x)) if indices is None else np.asarray(indices, dtype=np.int64)
    out = None if output_dir is None else Path(output_dir)
    writer = RecordWriter(out / "audit.jsonl") if out is not None else None
    state = _Audit(estimator, list(attacks), registry, budgets, eps, int(verify_n), float(verify_alpha), out)
    records = list(writer.records) if writer else []
    try:
        todo = [j for j in range(len(x)) if writer is None or int(indices[j]) not in writer.done]
        chunks = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
        for chunk in tqdm(chunks, desc="audit", disable=not progress):
            for record in state.run(x[chunk], y[chunk], indices[chunk], n=n, n0=n0, alpha=alpha):
                records.append(record)
                if writer is not None:
                    writer.append(record)
    finally:
        if writer is not None:
            writer.close()
    records.sort(key=lambda r: r["idx"])
    violations = [v for r in records for v in r.get("violations", [])]
    if radii is None:
        top = max([r["radius"] for r in records] + eps)
        radii = np.round(np.linspace(0.0, top, 17), 4)
    result = AuditResult(records, list(attacks), np.asarray(radii, dtype=np.float64), violations)
    if out is not None:
        write_reports(result, out)
    return result


class _Audit:
    """One audit's settings and the fresh-noise counter; :meth:`run` audits a chunk of inputs."""

    def __init__(self, estimator, attacks, registry, budgets, eps, verify_n, verify_alpha, out):
        self.estimator, self.attacks, self.registry, self.budgets = estimator, attacks, registry, budgets
        self.eps, self.verify_n, self.verify_alpha, self.out = eps, verify_n, verify_alpha, out

    def verify(self, x_adv, classes, key_base) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flipped, counts of c, counts of the best other class) at the attack points, from fresh draws."""
        fresh = FRESH_BASE + key_base
        counts = verify_counts(self.estimator, x_adv, self.verify_n, fresh)
        rows = np.arange(len(classes))
        k_c = counts[rows, classes]
        others = counts.copy()
        others[rows, classes] = -1
        k_b = others.max(axis=1)
        p_value = binomial_test_two_sided(np.maximum(k_b, 0), k_c)
        return (k_b > k_c) & (p_value <= self.verify_alpha), k_c, k_b

    def run(self, x, y, indices, *, n, n0, alpha) -> list[dict]:
        est = self.estimator
        cert = est.certify_detailed(x, n=n, n0=n0, alpha=alpha, indices=indices)
        clean = np.where(cert.predict >= 0, cert.predict, cert.counts_selection.argmax(axis=1))
        records = [{"idx": int(i), "label": int(label), "predict": int(p), "radius": float(r),
                    "correct": int(p == label), "clean_class": int(c), "p_lower": float(pl), "attacks": {},
                    "violations": []}
                   for i, label, p, r, c, pl in zip(indices, y, cert.predict, cert.radius, clean, cert.p_lower)]
        onehot = np.eye(est.nb_classes, dtype=np.float32)[clean]
        for a, name in enumerate(self.attacks):
            entry = self.registry[name]
            best = [None] * len(x)
            runs = self.eps if entry.meta.get("bounded") else [None]
            for e, budget in enumerate(runs):
                open_rows = [j for j in range(len(x)) if best[j] is None]
                if not open_rows:
                    break
                attack = entry.obj(est, eps=budget, **self.budgets.get(name, {}))
                # One fresh stream per (attack, budget, input): data-set indices must stay below 2**30.
                key = (a * 64 + e + 1) * 2**30 + indices[open_rows]
                x_adv = self.generate(attack, x[open_rows], onehot[open_rows], int(key[0]))
                flipped, k_c, k_b = self.verify(x_adv, clean[open_rows], key)
                for k, j in enumerate(open_rows):
                    delta = x_adv[k] - x[j]
                    outcome = {"distance": float(np.linalg.norm(delta.ravel())), "flipped": bool(flipped[k]),
                               "eps": budget, "counts_class": int(k_c[k]), "counts_other": int(k_b[k])}
                    if flipped[k] or budget == runs[-1]:
                        best[j] = outcome
                    if flipped[k]:
                        self.check_violation(records[j], name, x[j], delta, outcome, int(key[k]))
            for j in range(len(x)):
                records[j]["attacks"][name] = best[j]
        return records

    def generate(self, attack, x, y, stream: int) -> np.ndarray:
        """
        Run one attack with its randomness keyed by ``stream`` (the EOT gradient noise and numpy's global generator,
        which ART's attacks draw from), so a resumed audit repeats exactly what an unbroken one does.
        """
        if callable(getattr(self.estimator, "reseed_gradients", None)):
            self.estimator.reseed_gradients(stream)
        saved = np.random.get_state()
        np.random.seed(stream % 2**32)
        try:
            return np.asarray(attack.generate(x, y=y), dtype=np.float32)
        finally:
            np.random.set_state(saved)

    def check_violation(self, record, attack, x, delta, outcome, fresh_key) -> None:
        """Record (and save) a confirmed flip strictly inside a certified radius."""
        if record["predict"] < 0 or outcome["distance"] >= record["radius"]:
            return
        violation = {"idx": record["idx"], "attack": attack, "certified_class": record["predict"],
                     "radius": record["radius"], "distance": outcome["distance"], "eps": outcome["eps"],
                     "counts_class": outcome["counts_class"], "counts_other": outcome["counts_other"],
                     "verify_index": FRESH_BASE + fresh_key, "seed": int(getattr(self.estimator, "seed", 0)),
                     "verify_n": self.verify_n}
        if self.out is not None:
            folder = self.out / "violations"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"idx{record['idx']}_{attack}.npz"
            np.savez(path, x=x, delta=delta, **{k: np.asarray(v) for k, v in violation.items() if v is not None})
            violation["file"] = str(path.relative_to(self.out))
        record["violations"].append(violation)


def verify_counts(estimator, x, n: int, indices) -> np.ndarray:
    """
    Vote counts at ``x`` from the noise streams ``indices`` (the estimator's ``audit_counts`` when it has one: an
    estimator whose certificate is about another classifier than its plain votes, such as a cascade, says which).
    """
    counter = getattr(estimator, "audit_counts", None) or estimator.predict_counts
    return np.asarray(counter(x, n=n, indices=np.asarray(indices)))


def replay_violation(estimator, path: str | os.PathLike) -> dict:
    """
    Re-run the verification of a saved violation: the same fresh noise keys at x + delta. Returns the counts and
    whether the flip is confirmed again (it is, bit for bit, with the same estimator, weights and seed).
    """
    data = np.load(path)
    x_adv = (data["x"] + data["delta"])[None].astype(np.float32)
    counts = verify_counts(estimator, x_adv, int(data["verify_n"]), [int(data["verify_index"])])[0]
    c = int(data["certified_class"])
    other = np.delete(np.arange(len(counts)), c)
    k_b = int(counts[other].max())
    return {"counts_class": int(counts[c]), "counts_other": k_b,
            "same_counts": (int(counts[c]), k_b) == (int(data["counts_class"]), int(data["counts_other"])),
            "distance": float(np.linalg.norm(data["delta"].ravel())), "radius": float(data["radius"])}


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
                cells += [o.get("distance", ""), int(bool(o.get("flipped")))]
            writer.writerow([r["idx"], r["label"], r["predict"], r["radius"], r["clean_class"], *cells,
                             len(r["violations"])])
    paths["md"].write_text(markdown_table(result, summary))
    plot_audit(result, paths["png"])
    return paths


def markdown_table(result: AuditResult, summary: dict | None = None) -> str:
    """Certified vs empirical robust accuracy (%) at each radius, and the violation count."""
    summary = summary or result.summary()
    radii = summary["radii"]
    lines = ["| accuracy (%) at L2 radius | " + " | ".join(f"{r:g}" for r in radii) + " |",
             "|---|" + "---|" * len(radii)]
    for name, values in summary["curves"].items():
        label = {"certified": "certified", "best": "empirical, best of all attacks"}.get(name, f"empirical, {name}")
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines.append("| gap (best attack - certified) | " + " | ".join(f"{v:.1f}" for v in summary["gap"]) + " |")
    lines += ["", f"Inputs: {summary['inputs']}, certified: {summary['certified_inputs']}, violations: "
              f"{summary['violations']} (rate {summary['violation_rate']:.4f} of certified inputs)."]
    return "\n".join(lines) + "\n"


def plot_audit(result: AuditResult, path) -> None:
    """Certified and empirical robust accuracy against the L2 radius (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    radii = np.linspace(0.0, float(result.radii.max()) if len(result.radii) else 1.0, 200)
    ax.plot(radii, 100 * certified_accuracy(result.records, radii), label="certified", color="k", lw=2)
    for name in [*result.attacks, "best"]:
        acc = empirical_robust_accuracy(result.records, radii, None if name == "best" else name)
        ax.plot(radii, 100 * acc, label="best attack" if name == "best" else name,
                ls="--" if name == "best" else "-", lw=1)
    for v in result.violations:
        ax.axvline(v["distance"], color="r", alpha=0.3)
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"certified vs empirical ({len(result.violations)} violations)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
