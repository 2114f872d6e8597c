"""RMMSS: teacher -> robust model (modality dropout + HPDM) -> Feature Selection Module."""
