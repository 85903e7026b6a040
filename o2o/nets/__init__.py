"""Networks: MLPs, critic ensembles and policy heads."""
