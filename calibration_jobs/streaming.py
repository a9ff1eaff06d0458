"""Layer-by-layer statistics for a shard of calibration sequences: the GPTQ pattern (DESIGN.md section 5).

`LayerStreamer(model, seqs)` runs the embedding once, then for each decoder layer in turn moves
that layer to the device, passes every sequence's hidden states through it while capturing the
layer's post-RoPE q, k, v (`oscar_cluster.capture`), sums them into a `LayerStatistics`, and keeps
the outputs as the next layer's inputs. Only one layer plus the shard's activations
([seqs, T, hidden]) are resident on the device; the rest of the model stays on the CPU.

The per-layer keyword arguments (attention mask, RoPE cos/sin, position ids) are the model's
own: one pass of the decoder body with every layer replaced by a recorder that keeps its kwargs
and returns its input unchanged. So any transformers decoder whose body has `embed_tokens`-style
children and a `layers` ModuleList streams without model-specific code (Llama, Qwen2, and
Gemma 3 with its per-layer sliding/full masks and RoPE tables), and the statistics equal those
of a whole-model pass (`collect_statistics`) on the same sequences.

A streamer that is asked for layer L while holding the inputs of an earlier layer replays the
layers in between without statistics: that is how a restarted worker or a resumed job catches up.
"""

from __future__ import annotations

import torch

from oscar_cluster.calibration import LayerStatistics, calibration_sequences
from oscar_cluster.capture import attention_modules, capturing, model_dims, rope_inv_freq
from oscar_cluster.errors import ConfigError

__all__ = ["LayerStreamer", "decoder_parts", "calibration_sequences"]


def decoder_parts(model) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """(decoder body, its ModuleList of decoder layers) of a transformers causal LM."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ConfigError(f"{type(model).__name__}: no decoder body with a `layers` ModuleList found; "
                          "layer-by-layer calibration supports transformers decoder models (Llama, Qwen2, Gemma 3)")
    return body, layers


class _Recorder(torch.nn.Module):
    """Stands in for decoder layer `idx` during the recording pass: keeps (hidden_states, kwargs)
    and returns the hidden states unchanged."""

    def __init__(self, idx: int, store: dict):
        super().__init__()
        self.idx, self.store = idx, store

    def forward(self, hidden_states, *args, **kwargs):
        if args:
            raise ConfigError(f"decoder layer {self.idx} was called with positional arguments besides the "
                              "hidden states; this model's body is not supported by layer streaming")
        self.store[self.idx] = (hidden_states, kwargs)
        return hidden_states


class LayerStreamer:
    """Statistics of one shard of sequences, one decoder layer at a time.

    model: a transformers causal LM (eval mode, on the CPU when `offload`); seqs: [T] long token
    sequences; device: where layers run (default: the model's); offload: move each layer to the
    device for its pass and back afterwards (False: the model already sits on the device).
    """

    def __init__(self, model, seqs: list[torch.Tensor], *, sinks: int = 4, query_stride: int = 8,
                 device: torch.device | str | None = None, offload: bool = True):
        if not seqs:
            raise ConfigError("a shard needs at least one calibration sequence")
        self.model = model
        self.body, self.layers = decoder_parts(model)
        self.seqs = seqs
        self.sinks, self.query_stride = int(sinks), int(query_stride)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.offload = offload
        _, self.num_q_heads, self.num_kv_heads, self.head_dim = model_dims(model)
        self.inv_freq = rope_inv_freq(model)
        self.attn = {m.layer_idx: m for m in attention_modules(model)}
        self.next_layer = 0  # the layer the held hidden states enter
        self.hidden: list[torch.Tensor] = []  # per sequence: [1, T, hidden]
        self.layer_kwargs: list[dict[int, dict]] = []  # per sequence: layer -> kwargs
        self.replayed = 0  # layers run without statistics (catching up after a restart or resume)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def tokens(self) -> int:
        return sum(int(s.numel()) for s in self.seqs)

    # ----- passes ----------------------------------------------------------------------------
    def _record(self) -> None:
        """Embedding plus the model's own per-layer kwargs for every sequence (no layer runs)."""
        originals = list(self.layers)
        if self.offload:
            for name, child in self.body.named_children():
                if name != "layers":
                    child.to(self.device)
        self.hidden, self.layer_kwargs = [], []
        store: dict[int, tuple] = {}
        # Inside `capturing` the masks are built for the capture attention, as in collect_statistics.
        with capturing(self.model, lambda *a: None), torch.inference_mode():
            try:
                for i in range(len(originals)):
                    self.layers[i] = _Recorder(i, store)
                for s in self.seqs:
                    store.clear()
                    self.body(input_ids=s[None].to(self.device), use_cache=False)
                    if len(store) != len(originals):
                        raise ConfigError(f"{type(self.body).__name__} ran {len(store)} of {len(originals)} layers")
                    self.hidden.append(store[0][0])
                    self.layer_kwargs.append({i: kw for i, (_, kw) in store.items()})
            finally:
                for i, layer in enumerate(originals):
                    self.layers[i] = layer
        self.next_layer = 0

    def _run_layer(self, idx: int, collect=None) -> None:
        """Pass every held sequence through layer `idx`; `collect(layer, q, k, v, scaling)` sees its
        attention inputs (None: no statistics)."""
        layer = self.layers[idx]
        if self.offload:
            layer.to(self.device)
        try:
            with capturing(self.model, collect or (lambda *a: None)), torch.inference_mode():
                for j, h in enumerate(self.hidden):
                    out = layer(h, **self.layer_kwargs[j][idx])
                    self.hidden[j] = out[0] if isinstance(out, tuple) else out
        finally:
            if self.offload and self.device.type != "cpu":
                layer.to("cpu")
        self.next_layer = idx + 1

    def advance(self, layer: int) -> None:
        """Hold the inputs of `layer`, replaying earlier layers (without statistics) if needed."""
        if not 0 <= layer < self.num_layers:
            raise ConfigError(f"layer {layer} out of range 0..{self.num_layers - 1}")
        if not self.hidden or self.next_layer > layer:
            self._record()
        while self.next_layer < layer:
            self._run_layer(self.next_layer)
            self.replayed += 1

    def statistics(self, layer: int) -> LayerStatistics:
        """Sums of `layer` over the shard's sequences (added in sequence order), then holds the
        inputs of layer + 1."""
        self.advance(layer)
        w_o = self.attn[layer].o_proj.weight
        st = LayerStatistics.zeros(layer, self.num_q_heads, self.num_kv_heads, self.head_dim)

        def collect(idx, query, key, value, scaling):
            # query: [1, Hq, T, d]; key/value: [1, H, T, d] (no cache during calibration)
            nonlocal st
            if idx != layer:
                raise ConfigError(f"captured layer {idx} while running layer {layer}")
            st = st + LayerStatistics.from_samples(
                query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), w_o,
                layer=layer, sinks=self.sinks, inv_freq=self.inv_freq, scaling=scaling,
                query_stride=self.query_stride)

        self._run_layer(layer, collect)
        return st
