"""Serving: manifests, calibrated ensemble maths, TTA, and the engine that runs them."""
