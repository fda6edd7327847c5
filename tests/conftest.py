import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# A compilation cache for this test session only: tests that run the same step again (a
# resumed run, a second workdir) load it instead of compiling it again. Programs that compile
# in under a second are not cached.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mim_jax_test_xla_"))
