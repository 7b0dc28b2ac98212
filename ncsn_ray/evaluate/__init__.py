"""Scoring sample sets: torch-fidelity metrics and the offline digits metric."""
