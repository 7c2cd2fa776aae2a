"""WSGI applications for the adapter's tests (importable as ``tests.wsgi_apps.*:app``)."""
