"""pytest set-up shared by the unit tests and the notebooks (``pytest --nbval notebooks``).

nbval's notebook kernels inherit this process's environment, so the variables set here reach them.
"""

import os
import tempfile

import matplotlib

# Quiet progress bars: tqdm writes changing rates to stderr, which nbval would compare.
os.environ.setdefault("CSM_PROGRESS", "0")

# Tests leave no trace: figures and results written while testing go to a scratch folder
# (csm_lib/outputs.py), never over the committed ones.
os.environ.setdefault("CSM_OUTPUT_DIR", tempfile.mkdtemp(prefix="csm-test-outputs-"))

# Headless matplotlib for the .py tests. Not via os.environ["MPLBACKEND"]: the notebook kernels
# inherit this process's environment, and MPLBACKEND=Agg there would stop ipykernel from
# selecting its inline backend, so figures would vanish from the notebooks' outputs.
if "MPLBACKEND" not in os.environ:
    matplotlib.use("Agg")
