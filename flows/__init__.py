"""Prefect flows and deployments, and the ``text-to-3d`` command line: wiring only."""
