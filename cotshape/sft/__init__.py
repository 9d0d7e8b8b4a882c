"""Supervised fine-tuning: params, tokenising, CPU kernels, the trainer; closeness."""
