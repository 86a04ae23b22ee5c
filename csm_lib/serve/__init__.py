"""Serving CSM over HTTP (chapter 11); ``python -m csm_lib.serve`` runs ``app.main``."""
