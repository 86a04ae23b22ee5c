"""``python -m csm_lib.verdicts [--markdown] [--root ...]``: the seed's claims, judged (``table.main``)."""

from csm_lib.verdicts.table import main

main()
