"""Synthetic data for the demo: T1 scans with known atrophy, built from a real brain template."""
