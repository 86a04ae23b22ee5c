"""``python -m csm_lib.serve [--model ...] [--port ...] [--LIMIT ...]``: the server (``cli.main``, chapter 11)."""

from csm_lib.serve.cli import main

main()
