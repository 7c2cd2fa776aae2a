"""ASGI applications and a real-socket serving helper for the ASGI adapter's tests."""
