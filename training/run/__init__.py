"""Run infrastructure of the training pipelines: machine use (threads, precision)."""
