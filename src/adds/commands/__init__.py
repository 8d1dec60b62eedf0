"""Sub-commands of the ``adds`` CLI, one module each.

Every module here defines ``register(subcommands)``, which adds its parser to the argparse sub-parser action and
sets ``handler=`` to a function ``(args) -> int`` (the exit code). ``adds.cli`` discovers the modules, so adding a
command never touches a shared file.

``adds --help`` imports every module here, so the pattern is (``tests/test_cli_start.py`` enforces it for every
command, including new ones)::

    import argparse                      # module level: the standard library only -- no torch, open_clip,
                                         # numpy, PIL, and no adds module that imports them
    def register(subcommands):
        parser = subcommands.add_parser("mycmd", help="...")
        parser.add_argument("--steps", type=int, default=10)
        parser.set_defaults(handler=run)

    def run(args) -> int:
        if args.steps < 1:               # argument checks first: an error answers in well under a second
            print(f"adds mycmd: error: --steps must be >= 1, got {args.steps}", file=sys.stderr)
            return 2
        import torch                     # heavy imports here, inside the handler
        from adds.model import ADDS
        ...

Ctrl+C is handled by :func:`adds.cli.main` (exit 130, one line); a command need not catch it.
"""
