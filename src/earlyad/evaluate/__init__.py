"""Evaluation of trained runs: metrics with subject-level bootstrap intervals, figures, the grid
summary with the chosen run's test metrics, and the comparison with the published study."""
