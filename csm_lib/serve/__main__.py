"""``python -m csm_lib.serve [--model ...] [--port ...] [--LIMIT ...]``: the server (``app.main``, chapter 11)."""

from csm_lib.serve.app import main

main()
