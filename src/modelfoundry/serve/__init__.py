"""Serving: the HTTP app (app.py), micro-batching (batching.py), metrics and the web page (static/)."""
