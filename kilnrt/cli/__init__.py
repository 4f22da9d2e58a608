"""The ``kilnrt`` command: build, run, bench, inspect, compare, exec (trtexec flags) and demo."""
