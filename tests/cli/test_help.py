import argparse

from gznq.cli.eval_cli import build_parser as eval_parser
from gznq.cli.train_cli import build_parser as train_parser


def _parsers():
    train = train_parser()
    sub = next(a for a in train._actions if isinstance(a, argparse._SubParsersAction))
    return {"eval": eval_parser(), **{f"train {name}": p for name, p in sub.choices.items()}}


def test_every_option_has_help_so_its_default_shows():
    # ArgumentDefaultsHelpFormatter adds "(default: ...)" only to options that have a help text
    missing = [f"{name} {a.option_strings[0]}" for name, p in _parsers().items() for a in p._actions
               if a.option_strings and a.help is None]
    assert missing == []
    assert all(issubclass(p.formatter_class, argparse.ArgumentDefaultsHelpFormatter) for p in _parsers().values())
