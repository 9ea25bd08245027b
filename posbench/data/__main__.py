"""Regenerate a position-bias dataset: ``python -m posbench.data NAME [--seed S] [--out FILE] [sizes]``.

``python -m posbench.data kv --out datasets/kv.jsonl`` rewrites the shipped copy (the defaults
are the shipped sizes); ``--n-pairs 10`` and the like change a size (each dataset's ``generate``
keyword arguments become options). Without ``--out`` the rows go to standard output.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from . import POSITION_BIAS_DATASETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posbench.data", description=__doc__.splitlines()[0])
    names = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, cls in POSITION_BIAS_DATASETS.items():
        sub = names.add_parser(name, help=cls.description)
        sub.add_argument("--seed", type=int, default=0, help="random seed (default 0, the shipped copy)")
        sub.add_argument("--out", help="JSONL file to write (default: standard output)")
        for param in list(inspect.signature(cls.generate).parameters.values())[1:]:
            sub.add_argument(f"--{param.name.replace('_', '-')}", dest=param.name, type=int, default=param.default,
                             help=f"default {param.default if param.default is not None else 'all'}")
    args = vars(parser.parse_args(argv))
    name, seed, out = args.pop("name"), args.pop("seed"), args.pop("out")
    dataset = POSITION_BIAS_DATASETS[name].generate(seed, **args)
    if out:
        dataset.to_jsonl(out)
        print(f"wrote {len(dataset)} {name} rows to {out}", file=sys.stderr)
    else:
        sys.stdout.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
