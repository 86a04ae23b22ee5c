"""``python -m csm_lib.bench NAME``: run one benchmark and write its ``results/*.json``."""

from csm_lib.bench.common import main

main()
