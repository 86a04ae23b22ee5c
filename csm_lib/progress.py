"""One switch for progress bars: set ``CSM_PROGRESS=0`` to silence every tqdm bar in csm_lib.

tqdm writes to stderr and its rates change from run to run, which a notebook test that
compares outputs (nbval) would flag; the test command turns bars off with this variable.

Every chapter's long loops report through it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    return os.environ.get("CSM_PROGRESS", "1") not in ("0", "false", "no")


def progress(iterable: Iterable[T], **kwargs) -> Iterable[T]:
    """``tqdm(iterable, **kwargs)``, or the bare iterable when ``CSM_PROGRESS=0``."""
    return tqdm(iterable, **kwargs) if enabled() else iterable
