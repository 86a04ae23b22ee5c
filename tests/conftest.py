import os

import matplotlib

# Quiet progress bars for tests (nbval kernels inherit this environment, too).
os.environ.setdefault("CSM_PROGRESS", "0")

# Headless matplotlib for the .py tests. Not via os.environ["MPLBACKEND"]: nbval's notebook
# kernels inherit this process's environment, and MPLBACKEND=Agg there would stop ipykernel
# from selecting its inline backend, so figures would vanish from the notebooks' outputs.
if "MPLBACKEND" not in os.environ:
    matplotlib.use("Agg")
