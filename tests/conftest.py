import os
import tempfile

# Eight CPU devices (the sharded paths run); LLVM's costliest optimization passes skipped: the
# suite's time is mostly compiling small programs, which this makes about a fifth quicker, while
# the tests that run many steps are no slower (measured on the 2-core machine).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_llvm_disable_expensive_passes=true")
# A compilation cache for this test session only (pytest-xdist's workers and the subprocesses
# the tests start inherit it): tests that run the same step again (a resumed run, a second
# workdir, a trainer in a subprocess) load it instead of compiling it again; every program is
# cached, the small ones too.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mim_jax_test_xla_"))
