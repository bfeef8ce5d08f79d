"""``python -m sandbox.sglang_standin <sglang.launch_server flags>``: the SGLang stand-in."""

import sys

from sandbox.sglang_standin.server import main

sys.exit(main())
