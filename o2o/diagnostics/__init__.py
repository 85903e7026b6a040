"""Diagnostics: how far Q is from the truth, and what fine-tuning costs."""
