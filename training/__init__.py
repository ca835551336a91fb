"""Offline pipelines that produce the checkpoints the backends load, and the evaluation harness.

Every entry point (`python -m training.<module>`) imports this package first: OpenMP threads wait passively
(models.settings.passive_threads) before any module here imports torch or faiss."""
from models.settings import passive_threads

passive_threads()
