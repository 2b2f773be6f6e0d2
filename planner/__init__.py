"""pdplan.planner: SLOs, the search space and search, ``Plan``, calibration, and the ``pdplan`` CLI."""
