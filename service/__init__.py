"""The unisr HTTP gateway (FastAPI): routers per resource, an engine that owns the backends."""
