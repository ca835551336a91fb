"""The unisr HTTP gateway (FastAPI): routers per resource, an engine that owns the backends."""
from models.settings import passive_threads, stay_offline

# before any backend imports faiss or torch (see models.settings.passive_threads)
passive_threads()
stay_offline()
