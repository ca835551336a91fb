"""Offline pipelines that produce the checkpoints the backends load, and the evaluation harness."""
