import os
import sys

from attnbench.cli import EXIT_INTERRUPTED, main

status = main()
if status == EXIT_INTERRUPTED:  # Ctrl-C: rows stored, worker killed, lock released; skip the
    sys.stdout.flush()  # interpreter's teardown of torch (most of a second) so the prompt is back at once
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
