"""Data preparation, contrastive pretraining and evaluation of pulse-fm encoders."""
