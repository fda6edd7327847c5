"""Evaluators run during and after pre-training; each returns a dict of named metrics."""
