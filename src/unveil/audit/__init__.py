"""Bias audit: did a model learn the disease or the dataset? Feature maps, probes, occlusion, saliency."""

from unveil.audit.run import AuditError, AuditResult, AuditThresholds, Verdict, audit

__all__ = ["AuditError", "AuditResult", "AuditThresholds", "Verdict", "audit"]
