"""Serve the gateway: python -m service  (host/port from UNISR_HOST / UNISR_PORT)."""
import uvicorn

from service.settings import Settings

if __name__ == "__main__":
    s = Settings()
    # beyond max_concurrency connections/tasks uvicorn answers 503 at once, before the app sees the request
    uvicorn.run("service.app:create_app", factory=True, host=s.host, port=s.port, log_level="warning",
                limit_concurrency=s.max_concurrency)
