"""Deployment tooling: the manifest generator (render.py) and its templates."""
