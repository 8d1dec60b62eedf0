"""``adds serve``: the web demo (upload an image, type labels, see scored tags as bars); see :mod:`adds.web`."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import textwrap

from adds.commands.tag import UsageError, add_model_arguments, build_tagger, precision_name_problem


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "serve",
        help="web demo: upload an image, type labels, see scored tags",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Start a small web app around a tagger and open http://HOST:PORT/ in a browser: upload an image,
            type labels, see scored tags as bars. The tagger is a trained ADDS head (--checkpoint) or the
            training-free CLIP baseline (--model/--pretrained), with the same options as 'adds tag'.
            Needs the [demo] extra: pip install 'adds[demo]'.

            It listens on 127.0.0.1 (this machine only) unless --host says otherwise; the demo has no
            authentication, so expose it to a network only on purpose."""),
        epilog="example:\n  adds serve --model ViT-B-32-quickgelu --pretrained openai --port 8000",
    )
    add_model_arguments(parser)
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    server.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    server.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                        help="largest accepted upload in MiB (default: %(default)s)")
    server.add_argument("--max-cached-labels", type=int, default=None, metavar="N",
                        help="label embeddings kept in memory, least recently used dropped first (default: 50000; "
                        "the on-disk cache is not bounded by it)")
    parser.set_defaults(handler=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_address(host: str, port: int) -> str | None:
    """``None`` when ``host:port`` can be listened on, else why not (port in use, unknown host), before the model
    is loaded -- uvicorn would only log it after."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        return f"--host {host}: {error.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            return f"cannot listen on {host}:{port}: {error.strerror}"
    return None


def run(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"adds serve: error: {message}", file=sys.stderr)
        return 2

    if not 0 < args.port < 65536:
        return fail(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        return fail(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.input_size is not None and args.input_size < 1:
        return fail(f"--input-size must be >= 1, got {args.input_size}")
    if args.max_cached_labels is not None and args.max_cached_labels < 1:
        return fail(f"--max-cached-labels must be >= 1, got {args.max_cached_labels}")
    if precision_name_problem(args.precision) is not None:
        return fail(precision_name_problem(args.precision))
    try:  # after the argument checks: torch comes with the web app, and argument errors should answer at once
        import uvicorn

        from adds.web.app import WebConfig, create_app
    except ImportError as error:
        return fail(f"the web demo needs the [demo] extra (pip install 'adds[demo]'): {error}")
    if not _is_loopback(args.host):
        print(f"adds serve: warning: listening on {args.host}, reachable from other machines; the demo has no "
              "authentication", file=sys.stderr)
    problem = _check_address(args.host, args.port)
    if problem is not None:
        return fail(problem)
    try:
        tagger = build_tagger(args)
    except UsageError as error:
        return fail(str(error))
    app = create_app(tagger, WebConfig(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024)))
    print(f"adds serve: open http://{args.host}:{args.port}/  (Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
