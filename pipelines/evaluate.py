"""``riskstream eval fraud|nab``: detection quality on labelled data, without a broker.

The evaluations run the same feature and model code as the worker, in event order, so the
figures they print are the pipeline's own. Each lives in its own module; this one only
declares the command line.
"""

from __future__ import annotations

import argparse
import importlib


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="measure detection quality on labelled data")
    which = ev.add_subparsers(dest="evaluation", required=True)

    fraud = which.add_parser("fraud", help="stream a labelled transactions file through the "
                             "fraud scorer: score first, learn when the label is released")
    fraud.add_argument("--data", default=None, help="Parquet/CSV file or directory (Fraud "
                       "Detection Handbook layout, or riskstream's transaction schema with a "
                       "label column)")
    fraud.add_argument("--simulate", type=int, default=None, metavar="N",
                       help="instead of --data: N messages of the built-in simulator "
                       "(transactions, applications and their labels)")
    fraud.add_argument("--label-delay", default="7d", help="e.g. 7d, 12h (default 7d)")
    fraud.add_argument("--label-ttl", default=None, help="unlabelled events are learned as "
                       "genuine after this (default: the scorer's 30d; 4x the simulator's "
                       "label delay with --simulate)")
    fraud.add_argument("--warmup", default=None, help="not scored in the figures (default 7d; "
                       "10m with --simulate)")
    fraud.add_argument("--json", dest="json_out", default=None, help="write the figures here")
    fraud.add_argument("--limit", type=int, default=None, help="only the first N events")
    fraud.set_defaults(func=_delegate("pipelines.eval_fraud"))

    nab = which.add_parser("nab", help="run the metric detector over a NAB-layout corpus and "
                           "score it with NAB's published method")
    nab.add_argument("--data", required=True, help="NAB directory (data/, labels/, config/)")
    nab.add_argument("--out", default="var/nab-results", help="results directory")
    nab.add_argument("--name", default="riskstream", help="detector name (alphanumeric)")
    nab.add_argument("--json", dest="json_out", default=None, help="write the figures here")
    nab.set_defaults(func=_delegate("pipelines.eval_nab"))


def _delegate(module: str):
    def run(args: argparse.Namespace, settings) -> int:
        return importlib.import_module(module).run(args, settings)
    return run
