"""pdplan.profiles: model specs, hardware catalog, executor, profiler, Profile files, latency model.

Importing this package is cheap: torch and transformers are imported only by the executor and the
profiler modules, which the CLI loads inside the commands that need them.
"""
