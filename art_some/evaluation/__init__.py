"""
Evaluation: certifying data sets with resumable records, the attack-vs-certificate audit, and plots.

``art_some.evaluation.audit`` is the audit *module*, and calling it runs :func:`art_some.evaluation.audit.audit`:
``from art_some.evaluation import audit; audit(clf, x, y)`` and ``import art_some.evaluation.audit as m`` both
work (a package attribute named like its submodule would otherwise hide the module behind the function).
"""
import sys
import types

from art_some.evaluation import audit as _audit_module
from art_some.evaluation.audit import AuditResult, replay_violation, write_reports
from art_some.evaluation.plots import plot_certified_accuracy
from art_some.evaluation.runner import certify_dataset


class _CallableModule(types.ModuleType):
    """A module that runs its function of the same name when called."""

    def __call__(self, *args, **kwargs):
        return self.audit(*args, **kwargs)


sys.modules[_audit_module.__name__].__class__ = _CallableModule
audit = sys.modules[_audit_module.__name__]

__all__ = ["AuditResult", "audit", "certify_dataset", "plot_certified_accuracy", "replay_violation", "write_reports"]
