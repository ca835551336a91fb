"""Command-line helpers shared by the trainers: a config dataclass as --options, and the torch thread count."""
from __future__ import annotations

import argparse
import dataclasses


def add_config_args(parser: argparse.ArgumentParser, cls) -> None:
    """One --option per field of the dataclass cls (int/float/str defaults), named with dashes."""
    for f in dataclasses.fields(cls):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice; "
                        "1 decodes fastest on a busy CPU)")


def config_from_args(cls, args: argparse.Namespace):
    """The dataclass built from the parsed options; sets torch's thread count when --threads was given."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
