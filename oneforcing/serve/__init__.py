"""The live page of `oneforcing serve` (app.py: FastAPI routes and the page; engine.py: the streams it generates)."""
