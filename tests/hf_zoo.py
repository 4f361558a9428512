"""Tiny Hugging Face `transformers` models built from configs (random weights, no hub), exported
the way users export them: both torch exporters, `input_ids` and `attention_mask` as inputs."""

from __future__ import annotations

import pathlib
import warnings

import torch

HIDDEN, HEADS, KV_HEADS, MLP, VOCAB, LAYERS, TOKENS = 32, 4, 2, 64, 100, 2, 8

#: name -> (config class, model class, config keywords beyond the common ones)
FAMILIES = {
    "bert": ("BertConfig", "BertModel", {"intermediate_size": MLP}),
    "distilbert": ("DistilBertConfig", "DistilBertModel", {"dim": HIDDEN, "n_layers": LAYERS, "n_heads": HEADS}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": KV_HEADS, "intermediate_size": MLP}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": KV_HEADS, "intermediate_size": MLP}),
}
CAUSAL = ("gpt2", "llama", "qwen2")


def config(name: str):
    """The tiny config of a family: hidden 32, 4 heads (2 KV heads under GQA), MLP 64, 2 layers."""
    import transformers

    config_class, _, extra = FAMILIES[name]
    common = {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "max_position_embeddings": 64,
        "hidden_dim": MLP,  # DistilBERT's MLP width (other configs ignore unknown keys)
        "use_cache": False,
    }
    return getattr(transformers, config_class)(**{**common, **extra})


class Exported(torch.nn.Module):
    """forward(input_ids, attention_mask) -> the first output (hidden states or logits)."""

    def __init__(self, model: torch.nn.Module, causal: bool):
        super().__init__()
        self.model, self.causal = model, causal

    def forward(self, input_ids, attention_mask):
        extra = {"use_cache": False} if self.causal else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False, **extra)[0]


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The family's model with random weights (seeded), in eval mode, wrapped for export."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, FAMILIES[name][1])(config(name)).eval()
    return Exported(model, causal=name in CAUSAL).eval()


def example_inputs(batch: int = 1, tokens: int = TOKENS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids and an all-ones attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, tokens), generator=generator)
    return ids, torch.ones(batch, tokens, dtype=torch.long)


def export(name: str, path: pathlib.Path, dynamo: bool, dynamic: bool = False) -> pathlib.Path:
    """Export the family's model to `path` (dynamo: opset 18 with external data; TorchScript: 17);
    `dynamic`: batch and sequence length are dynamic axes, as users export for serving."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options: dict = {} if dynamo else {"opset_version": 17}
    if dynamic and dynamo:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", min=2, max=64)
        options["dynamic_shapes"] = ({0: batch, 1: seq}, {0: batch, 1: seq})
    elif dynamic:
        options["dynamic_axes"] = {name: {0: "batch", 1: "seq"} for name in ("input_ids", "attention_mask")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            build(name),
            example_inputs(),
            str(path),
            input_names=["input_ids", "attention_mask"],
            dynamo=dynamo,
            **options,
        )
    return path


class CachedDecoder(torch.nn.Module):
    """A causal LM with its KV cache as plain tensors, the way optimum exports decoders:
    forward(input_ids, attention_mask, *past) -> (logits, *presents), past/presents ordered
    layer by layer, key then value, each [batch, kv_heads, seq, head_dim]."""

    def __init__(self, model: torch.nn.Module, layers: int):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids, attention_mask, *past):
        import transformers

        cache = transformers.DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(self.layers)])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True)
        return (out.logits, *[t for layer in out.cache.layers for t in (layer.keys, layer.values)])


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    """(past input names, present output names) as optimum writes them."""
    kinds = [(i, kind) for i in range(layers) for kind in ("key", "value")]
    return [f"past_key_values.{i}.{k}" for i, k in kinds], [f"present.{i}.{k}" for i, k in kinds]


def export_with_cache(model: torch.nn.Module, config, path: pathlib.Path, past: int = 2, new: int = 3) -> pathlib.Path:
    """Export a causal LM with its KV cache (TorchScript, opset 17) and optimum's dynamic axes:
    batch_size, sequence_length, past_sequence_length (+ sequence_length for the mask and presents)."""
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_dim = config.hidden_size // config.num_attention_heads
    past_names, present_names = cache_names(layers)
    ids = torch.randint(0, config.vocab_size, (1, new))
    mask = torch.ones(1, past + new, dtype=torch.long)
    cache = tuple(torch.randn(1, kv_heads, past, head_dim) for _ in past_names)
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"}, "logits": {0: "batch_size", 1: "sequence_length"}}
    axes["attention_mask"] = {0: "batch_size", 1: "past_sequence_length + sequence_length"}
    axes.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names})
    axes.update({n: {0: "batch_size", 2: "past_sequence_length + sequence_length"} for n in present_names})
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            CachedDecoder(model, layers).eval(),
            (ids, mask, *cache),
            str(path),
            input_names=["input_ids", "attention_mask", *past_names],
            output_names=["logits", *present_names],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return path
