"""Brainy: serverless vector search on one object-storage bucket."""

import os

# Queries already run in parallel over segments; BLAS threads on top of them only
# fight for the same cores (this must be set before numpy is first imported).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
