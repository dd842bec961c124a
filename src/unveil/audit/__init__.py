"""Bias audit: did a model learn the disease or the dataset? Feature maps, probes, occlusion, saliency.

Every test follows one protocol (:mod:`unveil.audit.protocol`: an :class:`AuditTest` returns an
:class:`AuditOutcome` from an :class:`AuditContext`) and registers itself (:func:`register`); :func:`audit`
runs the registered tests in order.
"""

from unveil.audit.context import AuditContext
from unveil.audit.protocol import AuditOutcome, AuditTest, InsufficientData, register, registered, unregister
from unveil.audit.run import AuditError, AuditResult, AuditThresholds, Verdict, audit

__all__ = ["AuditContext", "AuditError", "AuditOutcome", "AuditResult", "AuditTest", "AuditThresholds",
           "InsufficientData", "Verdict", "audit", "register", "registered", "unregister"]
