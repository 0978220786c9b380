"""Evaluation on val and test, and the choice of the decision on val."""
