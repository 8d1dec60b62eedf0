"""Sub-commands of the ``adds`` CLI, one module each.

Every module here defines ``register(subcommands)``, which adds its parser to the argparse sub-parser action and
sets ``handler=`` to a function ``(args) -> int`` (the exit code). ``adds.cli`` discovers the modules, so adding a
command never touches a shared file. Keep module-level imports light: import heavy things inside the handler, so
``adds --help`` stays fast.
"""
