"""pdplan.reports."""
