"""A tiny Django app for the model-capture tests: audited models, each with an audited manager."""
