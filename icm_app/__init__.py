"""The ``icm`` application shell: one command line over the codec library and the services.

It sits above every other package (codec, analytics, edge, cloud, console) and is the only one
that names them all. Each subcommand's module is imported only when that subcommand runs, so
``icm --help`` and the light commands (``icm analyst``, ``icm certs``) never load torch.
"""
