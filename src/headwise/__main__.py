"""``python -m headwise ARGS`` is ``headwise ARGS``. It is also what torchrun starts for a
run on several machines (each process one rank; see docs/distributed.md)::

    torchrun --nnodes 2 --nproc-per-node 4 ... -m headwise train --objective clm --batch-size 64 ...
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
