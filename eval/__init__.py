"""The evaluation package of the SenseFlow suite (metrics, protocols, reports, gate)."""
