"""RSS: training semantic segmentation from rewards (pixel-level and image-level), with
synchronised advantage normalisation (SyncAN), progressive scale rewards (PSR) and pair-wise
spatial difference (PSD). `rmseg-train rss`; the ablation is `python -m training.rss.ablation`."""
