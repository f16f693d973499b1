"""`make bench` (see `bench/run.py`).

The bench measures Brainy as its functions run it, with one BLAS thread: importing
`brainy` before numpy sets that, as it does in the functions. The peers run under
the same setting.
"""

import brainy  # noqa: F401  (before numpy: one BLAS thread)
