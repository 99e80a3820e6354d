"""Reconstruction: six views with known cameras to a textured, engine-ready mesh.

A standalone library (no Prefect, stages or flows); filled by the reconstruction issue.
"""
