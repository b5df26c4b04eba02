"""Inference: one engine behind chat, API and evaluation."""
