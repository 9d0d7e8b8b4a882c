"""Turning metrics into reports, cross-experiment comparisons and exports."""
