"""Serving: the app's wiring (app.py), its endpoints (routes.py), the served model and its state
(service.py), request inputs (inputs.py), error answers (errors.py), micro-batching (batching.py),
metrics and the web page (static/)."""
