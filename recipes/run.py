"""The one entry point: run a recipe's job on this process.

    python recipes/run.py RECIPE.yaml [key=value ...]                  # one process
    torchrun --nproc_per_node 2 recipes/run.py RECIPE.yaml [...]       # N ranks
    deepspeed --num_gpus 2 recipes/run.py RECIPE.yaml [...]            # N ranks (DS_ACCELERATOR=cpu on CPU)
"""

import sys
from pathlib import Path

try:
    from oneforcing.cli import main, strip_launcher_args
except ImportError:  # running from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from oneforcing.cli import main, strip_launcher_args
from oneforcing.distributed import exit_process

if __name__ == "__main__":
    # The deepspeed launcher inserts --local_rank=N before the user's arguments.
    args = strip_launcher_args(sys.argv[1:])
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if args else 2)
    exit_process(main(["run", *args]))
