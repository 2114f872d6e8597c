"""Model code shared by the nodes and the training pipelines."""
