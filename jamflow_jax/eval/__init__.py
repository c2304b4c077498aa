"""Evaluation: objective metrics for generated facial motion and speech (`metrics`)."""
