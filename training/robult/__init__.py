"""Robult objectives (soft positive-unlabelled contrastive + latent reconstruction) for the
any-modal fusion student: `rmseg-train robult`, and an auxiliary objective of the RMMSS
robust stage (`robult:` block of training/configs/rmmss.yaml)."""
