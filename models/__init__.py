"""Networks and serving backends. Every backend implements models.backend.Backend."""
