"""``trtllm-operator``: run the operator, or generate its CRDs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from trtllm_operator import __version__


def _run(args: argparse.Namespace) -> int:
    import kopf

    # Settings are read from the environment by handlers.RUNTIME; flags override it.
    overrides = {
        "TRTLLM_OPERATOR_KUBECONFIG": args.kubeconfig,
        "TRTLLM_OPERATOR_WORKERS": args.workers,
        "TRTLLM_OPERATOR_LOG_FORMAT": args.log_format,
        "TRTLLM_OPERATOR_METRICS_PORT": args.metrics_port,
        "TRTLLM_OPERATOR_HEALTH_PORT": args.health_port,
    }
    for key, value in overrides.items():
        if value is not None:
            os.environ[key] = str(value)
    if args.namespace:
        os.environ["TRTLLM_OPERATOR_NAMESPACES"] = '["' + '","'.join(args.namespace) + '"]'

    from trtllm_operator import handlers  # registers the handlers with kopf
    from trtllm_operator.settings import OperatorSettings

    cfg = OperatorSettings()
    handlers.RUNTIME.settings = cfg
    # kopf's own JSON log format, for production log pipelines.
    kopf.configure(verbose=cfg.log_level == "DEBUG", quiet=cfg.log_level in ("WARNING", "ERROR"),
                   log_format=kopf.LogFormat.JSON if cfg.log_format == "json"
                   else kopf.LogFormat.FULL)
    if cfg.log_level != "DEBUG":
        # One line per API request or per handler call drowns a fleet's logs.
        for noisy in ("httpx", "httpx2", "kopf.objects", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if cfg.kubeconfig:
        os.environ["KUBECONFIG"] = cfg.kubeconfig  # read by kopf.login_with_kubeconfig
    handlers.prepare_leaderworkersets(cfg)
    liveness = (f"http://{cfg.bind_address}:{cfg.health_port}/healthz"
                if cfg.health_port else None)
    asyncio.run(kopf.operator(
        standalone=True,
        clusterwide=not cfg.namespaces,
        namespaces=cfg.namespaces,
        liveness_endpoint=liveness,
    ))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trtllm-operator", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster)")
    run.add_argument("--namespace", "-n", action="append",
                     help="namespace to watch (repeatable; default: all)")
    run.add_argument("--workers", type=int)
    run.add_argument("--log-format", choices=("text", "json"))
    run.add_argument("--metrics-port", type=int)
    run.add_argument("--health-port", type=int)
    run.set_defaults(func=_run)
    crds = sub.add_parser("crds", help="write the CRDs generated from the models")
    crds.add_argument("--out", default="crds")
    crds.add_argument("--check", action="store_true")
    crds.set_defaults(func=lambda a: __import__("trtllm_operator.crdgen", fromlist=["main"])
                      .main(["--out", a.out, *(["--check"] if a.check else [])]))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
