"""Base-model loading and the stacked multi-user LoRA model."""
