"""The CPU model zoo for dynamic-shape ONNX import: model definitions in
:mod:`zoo.models`, exported by ``scripts/export_zoo.py`` into ``tests/data/zoo/`` and
checked by ``tests/test_zoo.py``."""
