"""TensorRT's plugin registry and creators over :mod:`kilnrt.plugins`.

``trt.get_plugin_registry().get_creator(name, version, namespace)`` finds a registered plugin;
``creator.create_plugin(name, trt.PluginFieldCollection([...]), trt.TensorRTPhase.BUILD)`` fixes
its attributes from ``PluginField``s (numpy arrays, as TensorRT takes them); the result goes to
``network.add_plugin_v3(inputs, shape_inputs, plugin)``.  Plugin classes written in Python
against TensorRT's ``IPluginV3`` interfaces are not supported: register a kilnrt plugin or a
``trt.plugin`` one instead (docs/plugins.md).
"""
from __future__ import annotations

import enum
from typing import Any, Sequence

import numpy as np

import kilnrt.plugins as kp
from kilnrt.errors import ErrorCode, KilnError
from kilnrt.network import plugin as _registry
from kilnrt.network.plugin import PluginDefinition, PluginInstance


class PluginFieldType(enum.IntEnum):
    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10
    FP8 = 11
    INT4 = 12


class TensorRTPhase(enum.IntEnum):
    BUILD = 0
    RUNTIME = 1


_FIELD_TYPE = {"int": PluginFieldType.INT32, "ints": PluginFieldType.INT32, "float": PluginFieldType.FLOAT32,
               "floats": PluginFieldType.FLOAT32, "bool": PluginFieldType.INT8, "str": PluginFieldType.CHAR,
               "strs": PluginFieldType.CHAR, "array": PluginFieldType.UNKNOWN}


class PluginField:
    """One attribute for ``create_plugin``: a name and its data (a numpy array, or bytes for CHAR)."""

    def __init__(self, name: str = "", data: Any = None, type: PluginFieldType = PluginFieldType.UNKNOWN) -> None:
        self.name, self.data, self.type = name, data, PluginFieldType(type)

    @property
    def size(self) -> int:
        return 0 if self.data is None else int(np.size(self.data))

    def value(self) -> Any:
        if self.type == PluginFieldType.CHAR or isinstance(self.data, (bytes, str)):
            raw = self.data.tobytes() if isinstance(self.data, np.ndarray) else self.data
            return raw.decode("utf-8").rstrip("\0") if isinstance(raw, bytes) else str(raw)
        return self.data

    def __repr__(self) -> str:
        return f"PluginField({self.name!r}, {self.type.name})"


class PluginFieldCollection(list):
    """A list of PluginFields."""

    def __init__(self, fields: Sequence[PluginField] = ()) -> None:
        super().__init__(fields)


class PluginCreator:
    """A registered plugin's creator (TensorRT's ``IPluginCreatorV3One``)."""

    def __init__(self, definition: PluginDefinition) -> None:
        self._definition = definition

    name = property(lambda self: self._definition.name)
    plugin_version = property(lambda self: self._definition.version)
    plugin_namespace = property(lambda self: self._definition.namespace)

    @property
    def field_names(self) -> PluginFieldCollection:
        return PluginFieldCollection([PluginField(a.name, None, _FIELD_TYPE[a.kind])
                                      for a in self._definition.attributes.values()])

    def create_plugin(self, name: str, field_collection: Sequence[PluginField] = (),
                      phase: TensorRTPhase = TensorRTPhase.BUILD) -> PluginInstance:
        d = self._definition
        try:
            params = d.make_params({f.name: f.value() for f in field_collection})
        except ValueError as exc:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"create_plugin({name!r}) of {d.id} v{d.version}: {exc}") from None
        return PluginInstance(d, params, name)

    def __repr__(self) -> str:
        return f"<PluginCreator {self._definition.id} v{self._definition.version}>"


class PluginRegistry:
    """The registered plugins, as TensorRT's ``IPluginRegistry`` lists them."""

    @property
    def all_creators(self) -> list[PluginCreator]:
        return [PluginCreator(d) for d in kp.registered()]

    plugin_creator_list = all_creators

    def get_creator(self, name: str, version: str, namespace: str = "") -> PluginCreator | None:
        d = _registry.find(name, str(version), namespace)
        return None if d is None or d.builtin else PluginCreator(d)

    def get_plugin_creator(self, type: str, version: str, plugin_namespace: str = "") -> PluginCreator | None:
        """TensorRT 8's name of :meth:`get_creator`."""
        return self.get_creator(type, version, plugin_namespace)

    def deregister_creator(self, creator: PluginCreator) -> bool:
        return kp.deregister(_registry.plugin_id(creator.name, creator.plugin_namespace), creator.plugin_version)

    def register_creator(self, creator: Any, plugin_namespace: str = "") -> bool:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        "plugin creators written in Python against TensorRT's IPluginV3 interfaces are not supported; "
                        "register the plugin with @kilnrt.plugins.register or @trt.plugin.register (docs/plugins.md)")


_REGISTRY = PluginRegistry()


def get_plugin_registry() -> PluginRegistry:
    return _REGISTRY
