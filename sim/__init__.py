"""pdplan.sim."""
