"""Reports: one self-contained HTML page that summarises an ``unveil reproduce`` run."""

from unveil.reports.html import ReportError, write_report

__all__ = ["ReportError", "write_report"]
