"""
The audit run behind ``art-some evaluate``, as a library function over a config dataclass: the smoothed estimator
of :func:`~art_some.runs.estimator.smoothed_estimator`, audited (:func:`art_some.evaluation.audit.audit`) into
``output_dir``; one shard of it with ``shard``, and under ``torchrun`` each rank its own shard, rank 0 merging the
shards' folders into ``output_dir``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from art_some.runs.estimator import SmoothingConfig, note, run_info, shard_of_run, smoothed_estimator, warn_small_n


@dataclass(kw_only=True)
class EvaluateConfig(SmoothingConfig):
    """What an audit run is: the smoothing options, the attacks and their budgets, and where the audit goes."""

    output_dir: str  # audit.jsonl (resumed if present), its header, the reports and violations/ go here
    n: int = 2000
    max_inputs: int | None = 50
    attacks: list | None = None  # default: the attacks of the certificate's norm (evaluation.audit.default_attacks)
    eps: list = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0, 2.0])
    budgets: dict = field(default_factory=dict)  # per attack, its recipe's options: {"pgd": {"max_iter": 50}}
    verify_n: int = 1000
    verify_alpha: float = 0.001
    chunk: int = 8  # inputs per attack batch
    shard: tuple | str | None = None


def run_evaluate(config: EvaluateConfig, echo=note, progress: bool = True):
    """
    Audit ``config.dataset`` (every ``skip``-th input, at most ``max_inputs``) into ``config.output_dir``.

    :return: The :class:`~art_some.evaluation.audit.AuditResult` (of the shard with ``config.shard``); under
             torchrun rank 0 returns the merged audit's and the other ranks None.
    """
    import numpy as np

    from art_some.evaluation.audit import AUDIT_FOLDER, audit, default_attacks, merge_audits, merged_audit_before
    from art_some.runs.shards import merge_ranks

    shard, ranked = shard_of_run(config.shard, config.device)
    clf, data, _ = smoothed_estimator(config, echo)
    warn_small_n(config.n, config.n0, clf.scale, config.alpha, echo)
    indices = list(range(0, len(data), config.skip))[:config.max_inputs]
    header_info = run_info(config.dataset, config.split, config.model, config.data_root, config)
    x = np.stack([np.asarray(data[i][0], dtype=np.float32) for i in indices])
    y = np.array([int(data[i][1]) for i in indices])
    folder = config.output_dir if ranked is None else AUDIT_FOLDER.shard_path(config.output_dir, ranked)
    attacks = list(config.attacks) if config.attacks else default_attacks(clf.radius_norm)
    result = audit(clf, x, y, attacks=attacks, n=config.n, n0=config.n0, alpha=config.alpha,
                   eps=config.eps, budgets=config.budgets, verify_n=config.verify_n, verify_alpha=config.verify_alpha,
                   indices=indices, output_dir=folder, batch_size=config.chunk, run_info=header_info, echo=echo,
                   progress=progress, shard=shard or ranked)
    if ranked is not None:
        return merge_ranks(config.output_dir, ranked, AUDIT_FOLDER, merge=merge_audits, read_back=merged_audit_before)
    return result


def config_path(output_dir) -> Path:
    """Where an audit run's resolved configuration goes: beside its records, ``audit.config.yaml``."""
    return Path(output_dir) / "audit.config.yaml"
