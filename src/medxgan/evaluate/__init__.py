"""Evaluation: explanations scored per image (metrics, scoring), their sanity and robustness checks."""
