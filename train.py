"""The pipeline's producing steps; see `python train.py --help`. Thin wrapper over gznq.cli.train_cli."""

from gznq.cli.train_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
