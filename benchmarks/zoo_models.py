"""The GPU benchmark zoo: the six models kilnrt was tuned on (``tuned=True``), then
architectures chosen for coverage of op families, not for speed.

The others were never tuned for: they are here to show whether kilnrt's general mechanisms
hold on models nobody named.  Weights are random (seeded; nothing is downloaded), with
BatchNorm statistics re-estimated on random inputs so that activations keep a sane scale in FP16.

Each entry: ``name -> Entry(family, make, batches, cnn, ...)`` where ``make(batch)`` returns
``(fp32 model on the GPU in eval mode, {input name: tensor})``; the model's forward takes the
inputs positionally, in that order, and returns one tensor or a tuple of tensors.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch


@dataclasses.dataclass(frozen=True)
class Entry:
    family: str
    make: Callable[[int], tuple]
    batches: tuple[int, int]     # batch 1 and a throughput batch
    cnn: bool = False            # the eager peer runs channels_last
    seq: int | None = None       # sequence length (text), samples or frames (speech)
    tuned: bool = False          # one of the models kilnrt was tuned on (the rest: nobody tuned for them)
    # the peers' module made from the FP32 one, with its weights, where the peers should run
    # another implementation of it than the exported one (BERT: PyTorch's fused SDPA attention)
    peer: Callable[[torch.nn.Module], torch.nn.Module] | None = None


def _recalibrate(model: torch.nn.Module, example: Callable[[], tuple]) -> torch.nn.Module:
    """BatchNorm running statistics re-estimated on random inputs (fresh ones make some
    networks' activations vanish below FP16's range); all-zero linear layers get small random
    weights.  Eval mode on return."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.detach().any():
            torch.nn.init.normal_(m.weight, std=0.02)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(*example())
    return model.eval()


def _image(constructor: Callable[[], torch.nn.Module], size: int = 224):
    def make(batch: int):
        torch.manual_seed(0)
        model = constructor().cuda()
        model = _recalibrate(model, lambda: (torch.randn(8, 3, size, size, device="cuda"),))
        return model, {"input": torch.randn(batch, 3, size, size, device="cuda")}
    return make


def _tv(name: str, **kwargs):
    def constructor():
        import torchvision

        return getattr(torchvision.models, name)(**kwargs)
    return constructor


def _timm(name: str):
    def constructor():
        import timm

        return timm.create_model(name, pretrained=False)
    return constructor


class _Outputs(torch.nn.Module):
    """A transformers model with positional inputs, returning its hidden states as a tensor."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...], field: str = "last_hidden_state") -> None:
        super().__init__()
        self.model, self.names, self.field = model, names, field

    def forward(self, *args):
        return getattr(self.model(**dict(zip(self.names, args))), self.field)


def _text(config_fn: Callable[[], object], model_fn: Callable[[object], torch.nn.Module], seq: int,
          decoder: bool = False):
    def make(batch: int):
        torch.manual_seed(0)
        config = config_fn()
        model = model_fn(config).cuda().eval()
        vocab = config.vocab_size
        ids = torch.randint(0, vocab, (batch, seq), device="cuda")
        if decoder:   # encoder-decoder: encoder ids and decoder ids
            dec = torch.randint(0, vocab, (batch, seq // 4), device="cuda")
            return _Outputs(model, ("input_ids", "decoder_input_ids")).eval(), \
                {"input_ids": ids, "decoder_input_ids": dec}
        return _Outputs(model, ("input_ids",)).eval(), {"input_ids": ids}
    return make


def _llama_gqa():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                       num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                       attn_implementation="eager")


def _llama_model(config):
    from transformers import LlamaModel

    return LlamaModel(config)


def _gpt2():
    from transformers import GPT2Config

    return GPT2Config(attn_implementation="eager")


def _gpt2_model(config):
    from transformers import GPT2Model

    return GPT2Model(config)


def _t5():
    from transformers import T5Config

    return T5Config(d_model=512, d_ff=2048, num_layers=6, num_heads=8, vocab_size=32128,
                    attn_implementation="eager")


def _t5_model(config):
    from transformers import T5Model

    return T5Model(config)


def _whisper(batch: int):
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, decoder_layers=1,
                           decoder_attention_heads=8,
                           num_mel_bins=80, max_source_positions=1500, attn_implementation="eager")
    encoder = WhisperModel(config).get_encoder().cuda().eval()
    return _Outputs(encoder, ("input_features",)).eval(), \
        {"input_features": torch.randn(batch, 80, 3000, device="cuda")}


def _wav2vec2(batch: int):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(num_hidden_layers=6, attn_implementation="eager")
    model = Wav2Vec2Model(config).cuda().eval()
    return _Outputs(model, ("input_values",)).eval(), {"input_values": torch.randn(batch, 16000, device="cuda")}


_BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _bert_config(attention: str):
    from transformers import BertConfig

    return BertConfig(attn_implementation=attention)


def _bert(batch: int, seq: int = 128):
    """BERT-base with the eager attention (plain ONNX ops when exported), a padding mask of
    random lengths and random token types."""
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(_bert_config("eager"), add_pooling_layer=True).cuda().eval()
    lengths = torch.randint(seq // 2, seq + 1, (batch,))
    inputs = {"input_ids": torch.randint(0, 30522, (batch, seq), device="cuda"),
              "attention_mask": (torch.arange(seq)[None, :] < lengths[:, None]).to(torch.int64).cuda(),
              "token_type_ids": torch.randint(0, 2, (batch, seq), device="cuda")}
    return _Outputs(model, _BERT_INPUTS).eval(), inputs


def _bert_sdpa(fp32: torch.nn.Module) -> torch.nn.Module:
    """The peers' BERT: the same weights, with PyTorch's SDPA attention."""
    from transformers import BertModel

    model = BertModel(_bert_config("sdpa"), add_pooling_layer=True).cuda().eval()
    model.load_state_dict(fp32.model.state_dict())
    return _Outputs(model, _BERT_INPUTS).eval()


class _DetectionHead(torch.nn.Module):
    """RetinaNet's backbone, FPN and heads, without the data-dependent box decoding and NMS:
    the class logits and box regressions of every anchor."""

    def __init__(self, model) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x):
        features = list(self.backbone(x).values())
        out = self.head(features)
        return out["cls_logits"], out["bbox_regression"]


def _retinanet(batch: int):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    head = _DetectionHead(model).cuda()
    head = _recalibrate(head, lambda: (torch.randn(4, 3, 512, 512, device="cuda"),))
    return head, {"input": torch.randn(batch, 3, 512, 512, device="cuda")}


ZOO: dict[str, Entry] = {
    # the models kilnrt was tuned on
    "resnet50": Entry("residual conv", _image(_tv("resnet50")), (1, 256), cnn=True, tuned=True),
    "mobilenet_v2": Entry("depthwise + inverted residual", _image(_tv("mobilenet_v2")), (1, 256), cnn=True,
                          tuned=True),
    "efficientnet_b0": Entry("MBConv + SE", _image(_tv("efficientnet_b0")), (1, 256), cnn=True, tuned=True),
    "convnext_tiny": Entry("7x7 depthwise + LayerNorm", _image(_tv("convnext_tiny")), (1, 128), cnn=True, tuned=True),
    "vit_b_16": Entry("vision transformer", _image(_tv("vit_b_16")), (1, 64), tuned=True),
    "bert": Entry("encoder (BERT-base)", _bert, (1, 32), seq=128, tuned=True, peer=_bert_sdpa),
    # convolutions: grouped, depthwise, squeeze-excitation, dense and multi-branch blocks
    "resnext50_32x4d": Entry("grouped conv", _image(_tv("resnext50_32x4d")), (1, 128), cnn=True),
    "regnet_y_1_6gf": Entry("grouped conv + SE", _image(_tv("regnet_y_1_6gf")), (1, 128), cnn=True),
    "densenet121": Entry("dense blocks", _image(_tv("densenet121")), (1, 128), cnn=True),
    "mobilenet_v3_large": Entry("depthwise + SE + hardswish", _image(_tv("mobilenet_v3_large")), (1, 256), cnn=True),
    "efficientnet_v2_s": Entry("fused MBConv + SE", _image(_tv("efficientnet_v2_s")), (1, 128), cnn=True),
    "shufflenet_v2_x1_0": Entry("channel shuffle", _image(_tv("shufflenet_v2_x1_0")), (1, 256), cnn=True),
    "squeezenet1_1": Entry("fire modules", _image(_tv("squeezenet1_1")), (1, 256), cnn=True),
    "googlenet": Entry("inception branches", _image(_tv("googlenet", aux_logits=False, init_weights=True)),
                       (1, 256), cnn=True),
    "inception_v3": Entry("asymmetric convs", _image(_tv("inception_v3", aux_logits=False, init_weights=True), 299),
                          (1, 128), cnn=True),
    "mnasnet1_0": Entry("depthwise (NAS)", _image(_tv("mnasnet1_0")), (1, 256), cnn=True),
    "ghostnet_100": Entry("ghost modules", _image(_timm("ghostnet_100")), (1, 256), cnn=True),
    "cspdarknet53": Entry("CSP blocks + mish", _image(_timm("cspdarknet53")), (1, 128), cnn=True),
    # vision transformers: shifted windows, hierarchical, hybrids, pooling mixers
    "swin_t": Entry("shifted-window attention", _image(_tv("swin_t")), (1, 64)),
    "maxvit_t": Entry("block + grid attention", _image(_tv("maxvit_t")), (1, 64)),
    "levit_128s": Entry("hierarchical attention + BN", _image(_timm("levit_128s")), (1, 256)),
    "pvt_v2_b0": Entry("spatial-reduction attention", _image(_timm("pvt_v2_b0")), (1, 128)),
    "mobilevit_s": Entry("conv + transformer hybrid", _image(_timm("mobilevit_s")), (1, 128)),
    "poolformer_s12": Entry("pooling mixer + GroupNorm", _image(_timm("poolformer_s12")), (1, 128)),
    # language and speech
    "llama_gqa": Entry("GQA decoder + rotary", _text(_llama_gqa, _llama_model, 128), (1, 16), seq=128),
    "gpt2": Entry("decoder (GPT-2)", _text(_gpt2, _gpt2_model, 128), (1, 16), seq=128),
    "t5_small": Entry("encoder-decoder", _text(_t5, _t5_model, 128, decoder=True), (1, 16), seq=128),
    "whisper_encoder": Entry("speech: conv front-end + encoder", _whisper, (1, 8), seq=3000),
    "wav2vec2": Entry("speech: waveform conv stack + encoder", _wav2vec2, (1, 8), seq=16000),
    # detection
    "retinanet_head": Entry("detection: FPN + dense heads", _retinanet, (1, 8), cnn=True),
}
