"""A `python -m tests.warm_target` run for tests/test_warm_start.py: says what it sees, then exits or waits."""

import json
import os
import sys
import time

if __name__ == "__main__":
    torch = sys.modules.get("torch")  # preloaded: a cold run has not imported it
    threads = torch.get_num_threads() if torch else None
    said = {"argv": sys.argv[1:], "env": dict(os.environ), "sid": os.getsid(0), "pid": os.getpid()}
    print(json.dumps({**said, "torch_threads": threads}))
    print("to stderr", file=sys.stderr)
    if sys.argv[1] == "wait":
        time.sleep(120)
    sys.exit(int(sys.argv[1]))
