"""Evaluation: certifying data sets with resumable records, the attack-vs-certificate audit, and plots."""
from art_some.evaluation.audit import AuditResult, audit, replay_violation, write_reports
from art_some.evaluation.plots import plot_certified_accuracy
from art_some.evaluation.runner import certify_dataset

__all__ = ["AuditResult", "audit", "certify_dataset", "plot_certified_accuracy", "replay_violation", "write_reports"]
