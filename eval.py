"""Evaluate a model on real images; see `python eval.py --help`. Thin wrapper over dfq.cli.eval_cli."""

from dfq.cli.eval_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
