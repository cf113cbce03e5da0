"""`python -m transferkit serve`: the one predictor behind an HTTP server (LitServe, dynamic batching)."""
