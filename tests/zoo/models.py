"""The zoo's models: small, seeded, random-weight networks covering the op families of
real vision, text, speech and detection models.

Each :class:`ZooModel` says how to build a wrapped ``torch.nn.Module`` whose forward takes
the model's inputs positionally and returns a tensor or a tuple of tensors, what those
inputs are (name, dtype, shape written with named dims, value range), and which named dims
are dynamic with the shape used for export and the two shapes used by the test.

Used by ``scripts/export_zoo.py`` (needs ``transformers``); ``tests/test_zoo.py`` reads only
the manifest that script writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Input:
    name: str
    shape: tuple            # ints and dim names ("batch", "seq", ...)
    dtype: str = "float32"  # "float32" or "int64"
    kind: str = "float"     # "float" (standard normal), "ids" (uniform in [low, high)), "mask" (padding)
    low: int = 0
    high: int = 0


@dataclass
class Dim:
    export: int             # the size used for export (static and dynamic)
    tests: tuple            # the two sizes the test runs the dynamic engines at
    max: int                # the upper bound given to torch.export.Dim


@dataclass
class ZooModel:
    name: str
    family: str
    build: Callable[[], nn.Module]
    inputs: list
    outputs: list
    dims: dict = field(default_factory=dict)
    vocab_size: int | None = None
    spatial: int | None = None   # image models that take any H, W (multiples of 32): the base size


def spatial_variant(m: ZooModel) -> tuple:
    """(inputs, dims) of an image model with dynamic batch, height and width: exported at
    (2, size+32, size+32), tested at (1, size, size+32) and (3, size+32, size)."""
    (x,) = m.inputs
    s = m.spatial
    inputs = [Input(x.name, ("batch", x.shape[1], "height", "width"), x.dtype, x.kind)]
    dims = {"batch": BATCH, "height": Dim(s + 32, (s, s + 32), 512), "width": Dim(s + 32, (s + 32, s), 512)}
    return inputs, dims


BATCH = Dim(export=2, tests=(1, 3), max=16)
SEQ = Dim(export=11, tests=(8, 13), max=32)


# --------------------------------------------------------------------- wrappers ---

class _Wrap(nn.Module):
    """Calls a Hugging Face model with keyword arguments and returns the named outputs."""

    def __init__(self, model: nn.Module, outputs: list, **extra):
        super().__init__()
        self.model = model.eval()
        self.keys = list(outputs)
        self.extra = extra

    def _call(self, **kw):
        out = self.model(**kw, **self.extra)
        vals = tuple(out[k] for k in self.keys)
        return vals[0] if len(vals) == 1 else vals


class ImageWrap(_Wrap):
    def forward(self, pixel_values):
        return self._call(pixel_values=pixel_values)


class TextWrap(_Wrap):
    def forward(self, input_ids, attention_mask):
        return self._call(input_ids=input_ids, attention_mask=attention_mask)


class Seq2SeqWrap(_Wrap):
    def forward(self, input_ids, attention_mask, decoder_input_ids):
        return self._call(input_ids=input_ids, attention_mask=attention_mask,
                          decoder_input_ids=decoder_input_ids)


class AudioWrap(_Wrap):
    def forward(self, input_values):
        return self._call(input_values=input_values)


class FeaturesWrap(_Wrap):
    def forward(self, input_features):
        return self._call(input_features=input_features)


def _seeded(fn: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return fn().eval()


# ------------------------------------------------------------------ HF families ---

def hf_image(name, family, make, outputs=("logits",), size=32, channels=3, spatial=False):
    def build():
        return ImageWrap(_seeded(make), list(outputs)).eval()
    return ZooModel(name, family, build, [Input("pixel_values", ("batch", channels, size, size))],
                    list(outputs), {"batch": BATCH}, spatial=size if spatial else None)


def hf_text(name, family, make, vocab, outputs=("last_hidden_state",), **extra):
    def build():
        return TextWrap(_seeded(make), list(outputs), **extra).eval()
    return ZooModel(name, family, build,
                    [Input("input_ids", ("batch", "seq"), "int64", "ids", 0, vocab),
                     Input("attention_mask", ("batch", "seq"), "int64", "mask", 0, 2)],
                    list(outputs), {"batch": BATCH, "seq": SEQ}, vocab)


def hf_seq2seq(name, make, vocab):
    def build():
        return Seq2SeqWrap(_seeded(make), ["logits"], use_cache=False).eval()
    return ZooModel(name, "seq2seq", build,
                    [Input("input_ids", ("batch", "seq"), "int64", "ids", 0, vocab),
                     Input("attention_mask", ("batch", "seq"), "int64", "mask", 0, 2),
                     Input("decoder_input_ids", ("batch", "dec_seq"), "int64", "ids", 0, vocab)],
                    ["logits"], {"batch": BATCH, "seq": SEQ, "dec_seq": Dim(7, (5, 9), 32)}, vocab)


def hf_audio(name, make):
    def build():
        return AudioWrap(_seeded(make), ["last_hidden_state"]).eval()
    return ZooModel(name, "speech", build, [Input("input_values", ("batch", "samples"))],
                    ["last_hidden_state"], {"batch": BATCH, "samples": Dim(400, (320, 512), 4000)})


def _t():
    import transformers
    return transformers


VOCAB = 256
ENC = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64, max_position_embeddings=64)
DEC = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128)
VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64)


def _hf_models() -> list:
    t = _t()
    m = []
    # ---- CNNs
    m.append(hf_image("resnet", "cnn", lambda: t.ResNetForImageClassification(t.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck", num_labels=10)), spatial=True))
    m.append(hf_image("convnext", "cnn", lambda: t.ConvNextForImageClassification(t.ConvNextConfig(
        num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)), spatial=True))
    m.append(hf_image("convnextv2", "cnn", lambda: t.ConvNextV2ForImageClassification(t.ConvNextV2Config(
        num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10))))
    m.append(hf_image("mobilenet_v1", "cnn", lambda: t.MobileNetV1ForImageClassification(t.MobileNetV1Config(
        image_size=32, depth_multiplier=0.125, num_labels=10))))
    m.append(hf_image("mobilenet_v2", "cnn", lambda: t.MobileNetV2ForImageClassification(t.MobileNetV2Config(
        image_size=32, depth_multiplier=0.15, finegrained_output=False, num_labels=10)), spatial=True))
    m.append(hf_image("efficientnet", "cnn", lambda: t.EfficientNetForImageClassification(t.EfficientNetConfig(
        image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=10)), spatial=True))
    m.append(hf_image("regnet_y", "cnn", lambda: t.RegNetForImageClassification(t.RegNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, layer_type="y",
        num_labels=10)), spatial=True))
    m.append(hf_image("bit", "cnn", lambda: t.BitForImageClassification(t.BitConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], global_padding="SAME", num_groups=4,
        layer_type="bottleneck", num_labels=10)), spatial=True))
    m.append(hf_image("poolformer", "cnn", lambda: t.PoolFormerForImageClassification(t.PoolFormerConfig(
        hidden_sizes=[16, 24, 32, 48], depths=[1, 1, 1, 1], num_labels=10)), spatial=True))
    m.append(hf_image("mobilevit", "cnn", lambda: t.MobileViTForImageClassification(t.MobileViTConfig(
        image_size=64, patch_size=2, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 48],
        num_attention_heads=2, num_labels=10)), size=64, spatial=True))
    m.append(hf_image("focalnet", "cnn", lambda: t.FocalNetForImageClassification(t.FocalNetConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], focal_levels=[2, 2],
        focal_windows=[3, 3], num_labels=10))))
    # ---- ViTs
    m.append(hf_image("vit", "vit", lambda: t.ViTForImageClassification(t.ViTConfig(**VIT, num_labels=10))))
    m.append(hf_image("deit", "vit", lambda: t.DeiTForImageClassificationWithTeacher(t.DeiTConfig(
        **VIT, num_labels=10))))
    m.append(hf_image("beit", "vit", lambda: t.BeitForImageClassification(t.BeitConfig(
        **VIT, use_relative_position_bias=True, num_labels=10))))
    m.append(hf_image("dinov2", "vit", lambda: t.Dinov2Model(t.Dinov2Config(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        mlp_ratio=2)), outputs=("last_hidden_state", "pooler_output")))
    m.append(hf_image("swin", "vit", lambda: t.SwinForImageClassification(t.SwinConfig(
        image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
        num_labels=10))))
    m.append(hf_image("levit", "vit", lambda: t.LevitForImageClassification(t.LevitConfig(
        image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4], depths=[1, 1, 1],
        key_dim=[8, 8, 8], mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2], num_labels=10)), size=64))
    m.append(hf_image("pvt_v2", "vit", lambda: t.PvtV2ForImageClassification(t.PvtV2Config(
        image_size=32, num_encoder_blocks=2, hidden_sizes=[16, 32], depths=[1, 1],
        num_attention_heads=[1, 2], sr_ratios=[2, 1], patch_sizes=[7, 3], strides=[4, 2],
        mlp_ratios=[2, 2], num_labels=10))))
    m.append(hf_image("clip_vision", "clip", lambda: t.CLIPVisionModel(t.CLIPVisionConfig(**VIT)),
                      outputs=("last_hidden_state", "pooler_output")))
    m.append(hf_image("siglip_vision", "clip", lambda: t.SiglipVisionModel(t.SiglipVisionConfig(**VIT)),
                      outputs=("last_hidden_state", "pooler_output")))
    # ---- segmentation / detection
    m.append(hf_image("segformer", "segmentation", lambda: t.SegformerForSemanticSegmentation(t.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32,
        num_labels=5)), size=64, spatial=True))
    m.append(hf_image("upernet_convnext", "segmentation", lambda: t.UperNetForSemanticSegmentation(
        t.UperNetConfig(backbone_config=t.ConvNextConfig(
            hidden_sizes=[16, 24, 32, 48], depths=[1, 1, 1, 1],
            out_features=["stage1", "stage2", "stage3", "stage4"]),
            hidden_size=32, pool_scales=[1, 2], use_auxiliary_head=False, num_labels=5)), size=64, spatial=True))
    m.append(hf_image("yolos", "detection", lambda: t.YolosForObjectDetection(t.YolosConfig(
        image_size=[32, 32], patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_detection_tokens=5, num_labels=5)), outputs=("logits", "pred_boxes")))
    # ---- text encoders
    pooled = ("last_hidden_state", "pooler_output")
    m.append(hf_text("bert", "encoder", lambda: t.BertModel(t.BertConfig(**ENC)), VOCAB, pooled))
    m.append(hf_text("roberta", "encoder", lambda: t.RobertaModel(t.RobertaConfig(**ENC)), VOCAB, pooled))
    m.append(hf_text("distilbert", "encoder", lambda: t.DistilBertModel(t.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)), VOCAB))
    m.append(hf_text("albert", "encoder", lambda: t.AlbertModel(t.AlbertConfig(**ENC, embedding_size=16)),
                     VOCAB, pooled))
    m.append(hf_text("electra", "encoder", lambda: t.ElectraModel(t.ElectraConfig(**ENC, embedding_size=16)),
                     VOCAB))
    m.append(hf_text("deberta_v2", "encoder", lambda: t.DebertaV2Model(t.DebertaV2Config(
        **ENC, relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"])), VOCAB))
    m.append(hf_text("mpnet", "encoder", lambda: t.MPNetModel(t.MPNetConfig(**ENC)), VOCAB, pooled))
    m.append(hf_text("mobilebert", "encoder", lambda: t.MobileBertModel(t.MobileBertConfig(
        **{**ENC, "intermediate_size": 32}, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16,
        num_feedforward_networks=2)), VOCAB))
    m.append(hf_text("convbert", "encoder", lambda: t.ConvBertModel(t.ConvBertConfig(
        **ENC, embedding_size=32, conv_kernel_size=3)), VOCAB))
    m.append(hf_text("clip_text", "clip", lambda: t.CLIPTextModel(t.CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=2)), VOCAB, pooled))
    # ---- decoders (logits, no cache)
    lm = dict(outputs=("logits",), use_cache=False)
    m.append(hf_text("llama", "decoder", lambda: t.LlamaForCausalLM(t.LlamaConfig(**DEC)), VOCAB, **lm))
    m.append(hf_text("mistral", "decoder", lambda: t.MistralForCausalLM(t.MistralConfig(
        **DEC, sliding_window=8)), VOCAB, **lm))
    m.append(hf_text("qwen2", "decoder", lambda: t.Qwen2ForCausalLM(t.Qwen2Config(**DEC)), VOCAB, **lm))
    m.append(hf_text("qwen3", "decoder", lambda: t.Qwen3ForCausalLM(t.Qwen3Config(**DEC, head_dim=16)),
                     VOCAB, **lm))
    m.append(hf_text("gemma", "decoder", lambda: t.GemmaForCausalLM(t.GemmaConfig(**DEC, head_dim=16)),
                     VOCAB, **lm))
    m.append(hf_text("gemma2", "decoder", lambda: t.Gemma2ForCausalLM(t.Gemma2Config(
        **DEC, head_dim=16, sliding_window=8)), VOCAB, **lm))
    m.append(hf_text("phi", "decoder", lambda: t.PhiForCausalLM(t.PhiConfig(**DEC, partial_rotary_factor=0.5)),
                     VOCAB, **lm))
    m.append(hf_text("phi3", "decoder", lambda: t.Phi3ForCausalLM(t.Phi3Config(**DEC, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
                     VOCAB, **lm))
    m.append(hf_text("gpt_neox", "decoder", lambda: t.GPTNeoXForCausalLM(t.GPTNeoXConfig(
        **{k: v for k, v in DEC.items() if k != "num_key_value_heads"}, rotary_pct=0.25)), VOCAB, **lm))
    m.append(hf_text("gpt2", "decoder", lambda: t.GPT2LMHeadModel(t.GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=128, bos_token_id=1, eos_token_id=2)), VOCAB, **lm))
    m.append(hf_text("opt", "decoder", lambda: t.OPTForCausalLM(t.OPTConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
        word_embed_proj_dim=64, max_position_embeddings=128)), VOCAB, **lm))
    # ---- encoder-decoders
    m.append(hf_seq2seq("t5", lambda: t.T5ForConditionalGeneration(t.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0)), VOCAB))
    s2s = dict(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    m.append(hf_seq2seq("bart", lambda: t.BartForConditionalGeneration(t.BartConfig(**s2s)), VOCAB))
    m.append(hf_seq2seq("marian", lambda: t.MarianMTModel(t.MarianConfig(**s2s, decoder_start_token_id=0,
                                                                          pad_token_id=0)), VOCAB))
    # ---- speech
    w2v = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=4)
    m.append(hf_audio("wav2vec2", lambda: t.Wav2Vec2Model(t.Wav2Vec2Config(**w2v))))
    m.append(hf_audio("wav2vec2_stable_ln", lambda: t.Wav2Vec2Model(t.Wav2Vec2Config(
        **w2v, do_stable_layer_norm=True, feat_extract_norm="layer"))))
    m.append(hf_audio("hubert", lambda: t.HubertModel(t.HubertConfig(**w2v))))
    m.append(hf_audio("wavlm", lambda: t.WavLMModel(t.WavLMConfig(**w2v, num_buckets=32, max_bucket_distance=64))))

    def whisper():
        torch.manual_seed(0)
        cfg = t.WhisperConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, encoder_attention_heads=4,
                              decoder_layers=1, decoder_attention_heads=4, encoder_ffn_dim=64,
                              decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16, pad_token_id=0,
                              bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
        return FeaturesWrap(t.WhisperModel(cfg).get_encoder(), ["last_hidden_state"]).eval()
    m.append(ZooModel("whisper_encoder", "speech", whisper, [Input("input_features", ("batch", 16, 32))],
                      ["last_hidden_state"], {"batch": BATCH}))
    return m


# ------------------------------------------------------------- hand-written CNNs ---

class SEBlock(nn.Module):
    """MobileNetV3 inverted residual: 1x1 expand, depthwise kxk, squeeze-excitation, 1x1 project."""

    def __init__(self, cin, cexp, cout, k, stride, act):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, cexp, 1, bias=False), nn.BatchNorm2d(cexp), act())
        self.dw = nn.Sequential(nn.Conv2d(cexp, cexp, k, stride, k // 2, groups=cexp, bias=False),
                                nn.BatchNorm2d(cexp), act())
        self.se1, self.se2 = nn.Conv2d(cexp, cexp // 4, 1), nn.Conv2d(cexp // 4, cexp, 1)
        self.project = nn.Sequential(nn.Conv2d(cexp, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.dw(self.expand(x))
        s = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        y = self.project(y * s)
        return x + y if self.residual else y


class MobileNetV3ish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(SEBlock(16, 32, 16, 3, 1, nn.ReLU), SEBlock(16, 48, 24, 5, 2, nn.Hardswish),
                                    SEBlock(24, 64, 24, 3, 1, nn.Hardswish))
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class ShuffleNetish(nn.Module):
    """Grouped 1x1 convolutions, channel shuffle (reshape/transpose), depthwise, concat."""

    def __init__(self, c=24, groups=3):
        super().__init__()
        self.g = groups
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.g1 = nn.Conv2d(c, c, 1, groups=groups)
        self.dw = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.g2 = nn.Conv2d(c, c, 1, groups=groups)
        self.down = nn.Conv2d(c, c, 3, 2, 1, groups=groups)
        self.fc = nn.Linear(2 * c, 10)

    def shuffle(self, x):
        b, c, h, w = x.shape
        return x.reshape(b, self.g, c // self.g, h, w).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.g2(self.dw(self.shuffle(F.relu(self.g1(x)))))
        x = F.relu(x + y)
        x = torch.cat([F.avg_pool2d(x, 3, 2, 1), F.relu(self.down(x))], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseNetish(nn.Module):
    """Dense blocks (BN-ReLU-conv, concatenated features) with pooling transitions."""

    def __init__(self, growth=8, layers=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        c = 16
        self.block1 = nn.ModuleList()
        for _ in range(layers):
            self.block1.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 2 * growth, 1, bias=False),
                                             nn.BatchNorm2d(2 * growth), nn.ReLU(),
                                             nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False)))
            c += growth
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False))
        c //= 2
        self.block2 = nn.ModuleList()
        for _ in range(layers):
            self.block2.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, 1, 1, bias=False)))
            c += growth
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 2)
        for layer in self.block1:
            x = torch.cat([x, layer(x)], 1)
        x = F.avg_pool2d(self.trans(x), 2)
        for layer in self.block2:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1).flatten(1))


class FPNDetector(nn.Module):
    """RetinaNet-style: 3-level backbone, FPN top-down with nearest upsampling, shared
    class/box heads over all levels, flattened to (batch, anchors, classes) and (batch, anchors, 4)."""

    def __init__(self, c=16, classes=5, anchors=3):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 3, 2, 1), nn.BatchNorm2d(4 * c), nn.ReLU())
        self.lat = nn.ModuleList([nn.Conv2d(k * c, c, 1) for k in (1, 2, 4)])
        self.smooth = nn.ModuleList([nn.Conv2d(c, c, 3, 1, 1) for _ in range(3)])
        self.cls = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.GELU(), nn.Conv2d(c, anchors * classes, 3, 1, 1))
        self.box = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.SiLU(), nn.Conv2d(c, anchors * 4, 3, 1, 1))
        self.classes = classes

    def forward(self, x):
        f1 = self.c1(x)
        f2 = self.c2(f1)
        f3 = self.c3(f2)
        p3 = self.lat[2](f3)
        p2 = self.lat[1](f2) + F.interpolate(p3, scale_factor=2.0, mode="nearest")
        p1 = self.lat[0](f1) + F.interpolate(p2, size=f1.shape[-2:], mode="nearest")
        scores, boxes = [], []
        for p, smooth in zip((p1, p2, p3), self.smooth):
            p = smooth(p)
            b = p.shape[0]
            scores.append(self.cls(p).permute(0, 2, 3, 1).reshape(b, -1, self.classes))
            boxes.append(self.box(p).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return torch.sigmoid(torch.cat(scores, 1)), torch.cat(boxes, 1)


class UNetish(nn.Module):
    """Encoder-decoder segmentation: max-pool down, transposed-conv and bilinear up, skip concats."""

    def __init__(self, c=8, classes=4):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1), nn.GroupNorm(2, o), nn.ReLU(), nn.Conv2d(o, o, 3, 1, 1),
                                 nn.ReLU())
        self.e1, self.e2, self.e3 = block(3, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2)
        self.d2 = block(4 * c, 2 * c)
        self.d1 = block(3 * c, c)
        self.out = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([self.up2(e3), e2], 1))
        up = F.interpolate(d2, scale_factor=2.0, mode="bilinear", align_corners=False)
        d1 = self.d1(torch.cat([up, e1], 1))
        return F.log_softmax(self.out(d1), dim=1)


class SegHead(nn.Module):
    """SegFormer/UPerNet-like all-MLP decode head on a 4-stage conv pyramid: per-level 1x1
    projections, bilinear upsampling to the finest level, concat, fuse, classify, upsample."""

    def __init__(self, c=16, classes=5):
        super().__init__()
        chans = (c, 2 * c, 3 * c, 4 * c)
        self.stages = nn.ModuleList()
        cin = 3
        for i, co in enumerate(chans):
            self.stages.append(nn.Sequential(nn.Conv2d(cin, co, 4 if i == 0 else 2, 4 if i == 0 else 2),
                                             nn.GroupNorm(1, co), nn.Conv2d(co, co, 3, 1, 1, groups=co), nn.GELU()))
            cin = co
        self.proj = nn.ModuleList([nn.Linear(co, c) for co in chans])
        self.fuse = nn.Sequential(nn.Conv2d(4 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.cls = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        h, w = feats[0].shape[-2:]
        ups = []
        for f, proj in zip(feats, self.proj):
            b, ch, fh, fw = f.shape
            y = proj(f.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, fh, fw)
            ups.append(F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False))
        y = self.cls(self.fuse(torch.cat(ups[::-1], 1)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def _randomize_bn(module: nn.Module) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics (eval mode uses them)."""
    for mod in module.modules():
        if isinstance(mod, (nn.BatchNorm2d,)):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return module


def torch_image(name, family, cls, outputs=("logits",), size=32):
    def build():
        torch.manual_seed(0)
        return _randomize_bn(cls()).eval()
    return ZooModel(name, family, build, [Input("pixel_values", ("batch", 3, size, size))], list(outputs),
                    {"batch": BATCH}, spatial=size)


def _torch_models() -> list:
    return [
        torch_image("mobilenet_v3ish", "cnn", MobileNetV3ish),
        torch_image("shufflenetish", "cnn", ShuffleNetish),
        torch_image("densenetish", "cnn", DenseNetish),
        torch_image("fpn_detector", "detection", FPNDetector, ("scores", "boxes"), size=64),
        torch_image("unetish", "segmentation", UNetish, ("log_probs",)),
        torch_image("seghead", "segmentation", SegHead, size=64),
    ]


def all_models() -> list:
    """Every zoo model, in a stable order (hand-written first: they need no transformers)."""
    return _torch_models() + _hf_models()
