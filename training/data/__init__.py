"""Bags -> synchronised samples -> cached shards -> a PyTorch Dataset."""
