"""Test setup: 8 fake CPU devices, so sharding tests run on any machine."""

import os

# Must happen before JAX initializes its backends.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's CPU eigh/qr go through OpenBLAS, whose threads thrash on a busy 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
