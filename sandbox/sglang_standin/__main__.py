"""``python -m sandbox.sglang_standin <sglang.launch_server flags>``: the SGLang stand-in."""

import signal
import sys

# In a pod this process is PID 1 of its PID namespace, which the kernel spares every SIGTERM
# until a handler is installed (pid_namespaces(7)); a pod deleted while the stand-in was still
# importing then waited out its whole grace period (60 s in the LWS templates) before the
# SIGKILL. Real SGLang has that window too (its imports take seconds); no test studies it, so
# the stand-in stops at once from its first statement. `main` installs the serving handler.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

from sandbox.sglang_standin.server import main  # noqa: E402 (after the handler, on purpose)

sys.exit(main())
