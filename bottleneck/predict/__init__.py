"""Prediction and export: saved heads and fine-tuned networks as image -> probabilities."""
