"""Evaluate a model on real images; see `python eval.py --help`. Thin wrapper over gznq.cli.eval_cli."""

from gznq.cli.eval_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
