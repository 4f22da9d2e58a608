"""Caffe's protobuf messages, built in Python: only the messages and fields kilnrt reads.

Field numbers and types are those of BVLC Caffe's ``src/caffe/proto/caffe.proto``, and for SSD's
four layer types those of SSD Caffe's (so real ``deploy.prototxt`` and ``.caffemodel`` files
parse); kilnrt's own declaration, not a copy of it.
Fields a deploy file often carries but inference ignores (fillers, ``param { lr_mult }``,
``engine``) are declared so that they parse.  ``tests/test_caffe.py`` pins the core numbers.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": F.TYPE_STRING, "float": F.TYPE_FLOAT, "double": F.TYPE_DOUBLE, "bool": F.TYPE_BOOL,
            "int32": F.TYPE_INT32, "uint32": F.TYPE_UINT32, "int64": F.TYPE_INT64, "bytes": F.TYPE_BYTES}
ENGINE = {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2}

# message -> (enums {name: {value: number}}, fields [(name, number, type, repeated, default, packed)])
# a type is a scalar name, "enum:Name" (an enum of this message, "Message.Enum", or top-level),
# or a message name
MESSAGES: dict[str, tuple[dict, list]] = {
    "BlobShape": ({}, [("dim", 1, "int64", True, None, True)]),
    "BlobProto": ({}, [("shape", 7, "BlobShape", False, None, False),
                       ("data", 5, "float", True, None, True), ("diff", 6, "float", True, None, True),
                       ("double_data", 8, "double", True, None, True), ("double_diff", 9, "double", True, None, True),
                       # NVIDIA Caffe's raw storage (OpenCV's caffe.proto has it too): its fp16 models
                       # (OpenCV's res10_300x300_ssd_iter_140000_fp16) keep the weights here
                       ("raw_data_type", 10, "enum:Type", False, None, False), ("raw_data", 12, "bytes", False, None, False),
                       ("num", 1, "int32", False, "0", False), ("channels", 2, "int32", False, "0", False),
                       ("height", 3, "int32", False, "0", False), ("width", 4, "int32", False, "0", False)]),
    "FillerParameter": ({"VarianceNorm": {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2}},
                        [("type", 1, "string", False, "constant", False), ("value", 2, "float", False, "0", False),
                         ("min", 3, "float", False, "0", False), ("max", 4, "float", False, "1", False),
                         ("mean", 5, "float", False, "0", False), ("std", 6, "float", False, "1", False),
                         ("sparse", 7, "int32", False, "-1", False),
                         ("variance_norm", 8, "enum:VarianceNorm", False, "FAN_IN", False)]),
    "NetState": ({}, [("phase", 1, "enum:Phase", False, "TEST", False), ("level", 2, "int32", False, "0", False),
                      ("stage", 3, "string", True, None, False)]),
    "NetStateRule": ({}, [("phase", 1, "enum:Phase", False, None, False), ("min_level", 2, "int32", False, None, False),
                          ("max_level", 3, "int32", False, None, False), ("stage", 4, "string", True, None, False),
                          ("not_stage", 5, "string", True, None, False)]),
    "ParamSpec": ({"DimCheckMode": {"STRICT": 0, "PERMISSIVE": 1}},
                  [("name", 1, "string", False, None, False), ("share_mode", 2, "enum:DimCheckMode", False, None, False),
                   ("lr_mult", 3, "float", False, "1", False), ("decay_mult", 4, "float", False, "1", False)]),
    "ConvolutionParameter": ({"Engine": ENGINE}, [
        ("num_output", 1, "uint32", False, None, False), ("bias_term", 2, "bool", False, "true", False),
        ("pad", 3, "uint32", True, None, False), ("kernel_size", 4, "uint32", True, None, False),
        ("stride", 6, "uint32", True, None, False), ("dilation", 18, "uint32", True, None, False),
        ("pad_h", 9, "uint32", False, "0", False), ("pad_w", 10, "uint32", False, "0", False),
        ("kernel_h", 11, "uint32", False, None, False), ("kernel_w", 12, "uint32", False, None, False),
        ("stride_h", 13, "uint32", False, "1", False), ("stride_w", 14, "uint32", False, "1", False),
        ("group", 5, "uint32", False, "1", False), ("weight_filler", 7, "FillerParameter", False, None, False),
        ("bias_filler", 8, "FillerParameter", False, None, False), ("engine", 15, "enum:Engine", False, "DEFAULT", False),
        ("axis", 16, "int32", False, "1", False), ("force_nd_im2col", 17, "bool", False, "false", False)]),
    "PoolingParameter": ({"PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}, "Engine": ENGINE,
                          "RoundMode": {"CEIL": 0, "FLOOR": 1}}, [
        ("pool", 1, "enum:PoolMethod", False, "MAX", False), ("pad", 4, "uint32", False, "0", False),
        ("pad_h", 9, "uint32", False, "0", False), ("pad_w", 10, "uint32", False, "0", False),
        ("kernel_size", 2, "uint32", False, None, False), ("kernel_h", 5, "uint32", False, None, False),
        ("kernel_w", 6, "uint32", False, None, False), ("stride", 3, "uint32", False, "1", False),
        ("stride_h", 7, "uint32", False, None, False), ("stride_w", 8, "uint32", False, None, False),
        ("engine", 11, "enum:Engine", False, "DEFAULT", False), ("global_pooling", 12, "bool", False, "false", False),
        ("round_mode", 13, "enum:RoundMode", False, "CEIL", False)]),
    "InnerProductParameter": ({}, [
        ("num_output", 1, "uint32", False, None, False), ("bias_term", 2, "bool", False, "true", False),
        ("weight_filler", 3, "FillerParameter", False, None, False),
        ("bias_filler", 4, "FillerParameter", False, None, False),
        ("axis", 5, "int32", False, "1", False), ("transpose", 6, "bool", False, "false", False)]),
    "ReLUParameter": ({"Engine": ENGINE}, [("negative_slope", 1, "float", False, "0", False),
                                           ("engine", 2, "enum:Engine", False, "DEFAULT", False)]),
    "ELUParameter": ({}, [("alpha", 1, "float", False, "1", False)]),
    "SigmoidParameter": ({"Engine": ENGINE}, [("engine", 1, "enum:Engine", False, "DEFAULT", False)]),
    "TanHParameter": ({"Engine": ENGINE}, [("engine", 1, "enum:Engine", False, "DEFAULT", False)]),
    "SoftmaxParameter": ({"Engine": ENGINE}, [("engine", 1, "enum:Engine", False, "DEFAULT", False),
                                              ("axis", 2, "int32", False, "1", False)]),
    "BatchNormParameter": ({}, [("use_global_stats", 1, "bool", False, None, False),
                                ("moving_average_fraction", 2, "float", False, "0.999", False),
                                ("eps", 3, "float", False, "1e-05", False)]),
    "ScaleParameter": ({}, [("axis", 1, "int32", False, "1", False), ("num_axes", 2, "int32", False, "1", False),
                            ("filler", 3, "FillerParameter", False, None, False),
                            ("bias_term", 4, "bool", False, "false", False),
                            ("bias_filler", 5, "FillerParameter", False, None, False)]),
    "EltwiseParameter": ({"EltwiseOp": {"PROD": 0, "SUM": 1, "MAX": 2}}, [
        ("operation", 1, "enum:EltwiseOp", False, "SUM", False), ("coeff", 2, "float", True, None, False),
        ("stable_prod_grad", 3, "bool", False, "true", False)]),
    "ConcatParameter": ({}, [("axis", 2, "int32", False, "1", False), ("concat_dim", 1, "uint32", False, "1", False)]),
    "DropoutParameter": ({}, [("dropout_ratio", 1, "float", False, "0.5", False)]),
    "FlattenParameter": ({}, [("axis", 1, "int32", False, "1", False), ("end_axis", 2, "int32", False, "-1", False)]),
    "ReshapeParameter": ({}, [("shape", 1, "BlobShape", False, None, False), ("axis", 2, "int32", False, "0", False),
                              ("num_axes", 3, "int32", False, "-1", False)]),
    "LRNParameter": ({"NormRegion": {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1}, "Engine": ENGINE}, [
        ("local_size", 1, "uint32", False, "5", False), ("alpha", 2, "float", False, "1", False),
        ("beta", 3, "float", False, "0.75", False), ("norm_region", 4, "enum:NormRegion", False, "ACROSS_CHANNELS", False),
        ("k", 5, "float", False, "1", False), ("engine", 6, "enum:Engine", False, "DEFAULT", False)]),
    "PowerParameter": ({}, [("power", 1, "float", False, "1", False), ("scale", 2, "float", False, "1", False),
                            ("shift", 3, "float", False, "0", False)]),
    "PReLUParameter": ({}, [("filler", 1, "FillerParameter", False, None, False),
                            ("channel_shared", 2, "bool", False, "false", False)]),
    "InputParameter": ({}, [("shape", 1, "BlobShape", True, None, False)]),
    # SSD Caffe's (github.com/weiliu89/caffe, branch ssd): its messages and LayerParameter numbers,
    # which its .caffemodel files carry (OpenCV's opencv-caffe.proto renumbers the four
    # LayerParameter fields 147-150 and adds fields of its own)
    "NormalizeParameter": ({}, [
        ("across_spatial", 1, "bool", False, "true", False), ("scale_filler", 2, "FillerParameter", False, None, False),
        ("channel_shared", 3, "bool", False, "true", False), ("eps", 4, "float", False, "1e-10", False)]),
    "PermuteParameter": ({}, [("order", 1, "uint32", True, None, False)]),
    "PriorBoxParameter": ({"CodeType": {"CORNER": 1, "CENTER_SIZE": 2, "CORNER_SIZE": 3}}, [
        ("min_size", 1, "float", True, None, False), ("max_size", 2, "float", True, None, False),
        ("aspect_ratio", 3, "float", True, None, False), ("flip", 4, "bool", False, "true", False),
        ("clip", 5, "bool", False, "false", False), ("variance", 6, "float", True, None, False),
        ("img_size", 7, "uint32", False, None, False), ("img_h", 8, "uint32", False, None, False),
        ("img_w", 9, "uint32", False, None, False), ("step", 10, "float", False, None, False),
        ("step_h", 11, "float", False, None, False), ("step_w", 12, "float", False, None, False),
        ("offset", 13, "float", False, "0.5", False)]),
    "NonMaximumSuppressionParameter": ({}, [
        ("nms_threshold", 1, "float", False, "0.3", False), ("top_k", 2, "int32", False, None, False),
        ("eta", 3, "float", False, "1", False)]),
    "SaveOutputParameter": ({}, [       # read so that deploy files parse; kilnrt saves nothing
        ("output_directory", 1, "string", False, None, False), ("output_name_prefix", 2, "string", False, None, False),
        ("output_format", 3, "string", False, None, False), ("label_map_file", 4, "string", False, None, False),
        ("name_size_file", 5, "string", False, None, False), ("num_test_image", 6, "uint32", False, None, False)]),
    "DetectionOutputParameter": ({}, [
        ("num_classes", 1, "uint32", False, None, False), ("share_location", 2, "bool", False, "true", False),
        ("background_label_id", 3, "int32", False, "0", False),
        ("nms_param", 4, "NonMaximumSuppressionParameter", False, None, False),
        ("save_output_param", 5, "SaveOutputParameter", False, None, False),
        ("code_type", 6, "enum:PriorBoxParameter.CodeType", False, "CORNER", False),
        ("variance_encoded_in_target", 8, "bool", False, "false", False), ("keep_top_k", 7, "int32", False, "-1", False),
        ("confidence_threshold", 9, "float", False, None, False), ("visualize", 10, "bool", False, "false", False),
        ("visualize_threshold", 11, "float", False, None, False), ("save_file", 12, "string", False, None, False)]),
}

# LayerParameter's per-type parameter fields: (field, number, message)
LAYER_PARAMS = [("batch_norm_param", 139, "BatchNormParameter"), ("concat_param", 104, "ConcatParameter"),
                ("convolution_param", 106, "ConvolutionParameter"), ("dropout_param", 108, "DropoutParameter"),
                ("eltwise_param", 110, "EltwiseParameter"), ("elu_param", 140, "ELUParameter"),
                ("flatten_param", 135, "FlattenParameter"), ("inner_product_param", 117, "InnerProductParameter"),
                ("input_param", 143, "InputParameter"), ("lrn_param", 118, "LRNParameter"),
                ("pooling_param", 121, "PoolingParameter"), ("power_param", 122, "PowerParameter"),
                ("prelu_param", 131, "PReLUParameter"), ("relu_param", 123, "ReLUParameter"),
                ("reshape_param", 133, "ReshapeParameter"), ("scale_param", 142, "ScaleParameter"),
                ("sigmoid_param", 124, "SigmoidParameter"), ("softmax_param", 125, "SoftmaxParameter"),
                ("tanh_param", 127, "TanHParameter"),
                # SSD Caffe's layers
                ("detection_output_param", 204, "DetectionOutputParameter"), ("norm_param", 206, "NormalizeParameter"),
                ("permute_param", 202, "PermuteParameter"), ("prior_box_param", 203, "PriorBoxParameter")]
MESSAGES["LayerParameter"] = ({}, [
    ("name", 1, "string", False, None, False), ("type", 2, "string", False, None, False),
    ("bottom", 3, "string", True, None, False), ("top", 4, "string", True, None, False),
    ("phase", 10, "enum:Phase", False, None, False), ("loss_weight", 5, "float", True, None, False),
    ("param", 6, "ParamSpec", True, None, False), ("blobs", 7, "BlobProto", True, None, False),
    ("propagate_down", 11, "bool", True, None, False), ("include", 8, "NetStateRule", True, None, False),
    ("exclude", 9, "NetStateRule", True, None, False)]
    + [(f, n, m, False, None, False) for f, n, m in LAYER_PARAMS])

# the legacy V1 layer: its type is an enum; its parameter fields have other numbers
V1_TYPES = {"NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3, "CONTRASTIVE_LOSS": 37,
            "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6, "DUMMY_DATA": 32,
            "EUCLIDEAN_LOSS": 7, "ELTWISE": 25, "EXP": 38, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10,
            "HINGE_LOSS": 28, "IM2COL": 11, "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14,
            "LRN": 15, "MEMORY_DATA": 29, "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17,
            "POWER": 26, "RELU": 18, "SIGMOID": 19, "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36,
            "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24,
            "THRESHOLD": 31}
V1_PARAMS = [("concat_param", 9, "ConcatParameter"), ("convolution_param", 10, "ConvolutionParameter"),
             ("dropout_param", 12, "DropoutParameter"), ("eltwise_param", 24, "EltwiseParameter"),
             ("inner_product_param", 17, "InnerProductParameter"), ("lrn_param", 18, "LRNParameter"),
             ("pooling_param", 19, "PoolingParameter"), ("power_param", 21, "PowerParameter"),
             ("relu_param", 30, "ReLUParameter"), ("sigmoid_param", 38, "SigmoidParameter"),
             ("softmax_param", 39, "SoftmaxParameter"), ("tanh_param", 37, "TanHParameter")]
MESSAGES["V1LayerParameter"] = ({"LayerType": V1_TYPES}, [
    ("bottom", 2, "string", True, None, False), ("top", 3, "string", True, None, False),
    ("name", 4, "string", False, None, False), ("include", 32, "NetStateRule", True, None, False),
    ("exclude", 33, "NetStateRule", True, None, False), ("type", 5, "enum:LayerType", False, None, False),
    ("blobs", 6, "BlobProto", True, None, False), ("param", 1001, "string", True, None, False),
    ("blobs_lr", 7, "float", True, None, False), ("weight_decay", 8, "float", True, None, False),
    ("loss_weight", 35, "float", True, None, False)]
    + [(f, n, m, False, None, False) for f, n, m in V1_PARAMS])
MESSAGES["NetParameter"] = ({}, [
    ("name", 1, "string", False, None, False), ("input", 3, "string", True, None, False),
    ("input_shape", 8, "BlobShape", True, None, False), ("input_dim", 4, "int32", True, None, False),
    ("force_backward", 5, "bool", False, "false", False), ("state", 6, "NetState", False, None, False),
    ("debug_info", 7, "bool", False, "false", False), ("layer", 100, "LayerParameter", True, None, False),
    ("layers", 2, "V1LayerParameter", True, None, False)])
TOP_ENUMS = {"Phase": {"TRAIN": 0, "TEST": 1},
             "Type": {"DOUBLE": 0, "FLOAT": 1, "FLOAT16": 2, "INT": 3, "UINT": 4}}   # NVIDIA Caffe's


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="kilnrt/caffe/caffe_schema.proto", package="caffe",
                                            syntax="proto2")
    for name, values in TOP_ENUMS.items():
        e = fd.enum_type.add(name=name)
        for v, n in values.items():
            e.value.add(name=v, number=n)
    for mname, (enums, fields) in MESSAGES.items():
        m = fd.message_type.add(name=mname)
        for ename, values in enums.items():
            e = m.enum_type.add(name=ename)
            for v, n in values.items():
                e.value.add(name=v, number=n)
        for fname, number, ftype, repeated, default, packed in fields:
            f = m.field.add(name=fname, number=number,
                            label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if ftype in _SCALARS:
                f.type = _SCALARS[ftype]
            elif ftype.startswith("enum:"):
                ename = ftype[5:]
                f.type = F.TYPE_ENUM
                # an enum of this message, of another ("PriorBoxParameter.CodeType") or top-level
                f.type_name = f".caffe.{mname}.{ename}" if ename in enums else f".caffe.{ename}"
            else:
                f.type, f.type_name = F.TYPE_MESSAGE, f".caffe.{ftype}"
            if default is not None:
                f.default_value = default
            if packed:
                f.options.packed = True
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
_CLASSES = {name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"caffe.{name}"))
            for name in MESSAGES}
NetParameter = _CLASSES["NetParameter"]
LayerParameter = _CLASSES["LayerParameter"]
V1LayerParameter = _CLASSES["V1LayerParameter"]
BlobProto = _CLASSES["BlobProto"]
BlobShape = _CLASSES["BlobShape"]


def message_class(name: str):
    """The message class of one of :data:`MESSAGES` (``"ConvolutionParameter"``, …)."""
    return _CLASSES[name]
