"""pdplan.realrun."""
