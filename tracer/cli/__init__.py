"""The ``tracer`` command line: the only layer that turns files, flags and env into config."""
