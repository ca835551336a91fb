"""The unisr HTTP gateway (FastAPI): routers per resource, an engine that owns the backends."""
import os

# OpenMP threads that spin while they wait (the default of the runtime faiss and torch share) starve each other
# on a small, busy machine: one dense query took ~500 ms instead of ~15 ms on the 2-core development machine.
# Set before any backend imports faiss or torch; an explicit environment setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
