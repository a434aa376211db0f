"""Which decoder layers attend through a sliding window, and how wide, as each family's config says.

transformers decides it per layer (`cache_utils.get_layer_types_and_kwargs`): a config's `layer_types`
when it has them ("sliding_attention" layers use `sliding_window`), else every layer when
`sliding_window` is set (Mistral, Phi-3). Configs written before `layer_types` existed leave the
pattern to the family's code; those defaults are below. Layers are counted by position in the stack,
as a loaded model numbers them (a pruned model with layers removed takes the pattern by position too).
"""

from __future__ import annotations

# model_type -> whether layer i (0-based position) is a sliding-window layer when the config has no
# layer_types (transformers' defaults for those families).
DEFAULT_PATTERNS = {
    "gemma2": lambda i, config: i % 2 == 0,
    "gemma3_text": lambda i, config: (i + 1) % (config.get("sliding_window_pattern") or 6) != 0,
    "qwen2": lambda i, config: i >= (config.get("max_window_layers") or 28),
}


def attention_windows(config: dict, num_layers: int) -> list[int | None]:
    """Per layer position: the sliding window (keys a query may see) or None for full attention."""
    window = config.get("sliding_window")
    model_type = str(config.get("model_type") or "")
    # Qwen configs carry a sliding_window that applies only with use_sliding_window (off by default).
    switched_on = config.get("use_sliding_window", not model_type.startswith("qwen"))
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0 or not switched_on:
        return [None] * num_layers
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list):
        return [window if i < len(layer_types) and layer_types[i] == "sliding_attention" else None
                for i in range(num_layers)]
    pattern = DEFAULT_PATTERNS.get(model_type)
    return [window if pattern is None or pattern(i, config) else None for i in range(num_layers)]
