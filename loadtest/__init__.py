"""Load test of the gateway: a locust user (loadtest/locustfile.py) and a headless runner (python -m loadtest.run)."""
