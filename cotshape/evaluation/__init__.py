"""Scoring students on the test problems and the verdict of each claim."""
