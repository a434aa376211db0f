"""The records stage 3 hands on: a model's structure, layer by layer, as the shapes give it.

Stage 4 (`prunescope.measure`) fills in `is_zero_layer`, `fingerprint` and, with --sparsity,
`contents`; `prunescope.schema` turns these records into JSON and back.
"""

from __future__ import annotations

from ..records import Record

# What decides whether a layer is all zero: its attention and MLP (routers and experts included).
CONTENT_BUCKETS = ("attention", "mla", "attention_other", "mlp", "router", "experts", "shared_experts",
                   "mlp_other")


class AttentionStructure(Record):
    type: str
    total: int
    q_proj: int | None  # None where the attention has no such projection (MLA: q_a/q_b, no k or v)
    k_proj: int | None
    v_proj: int | None
    o_proj: int
    num_heads: int | None
    num_kv_heads: int | None
    qk_norm: int = 0  # q_norm/k_norm inside the attention module (Qwen3, Gemma3)
    other: int = 0
    # Multi-head latent attention (DeepSeek): parameters per tensor group (q_a_proj, ..., kv_b_proj) and
    # the ranks and head widths the shapes give (q_lora_rank, kv_lora_rank, qk_nope_head_dim, ...).
    mla: dict | None = None


class MlpStructure(Record):
    type: str
    total: int
    gate_proj: int | None  # None for MLPs without a gate (OPT, Phi-2: fc1/fc2)
    up_proj: int
    down_proj: int
    intermediate_size: int | None  # None in MoE layers: the width belongs to the experts
    other: int = 0
    # Mixture-of-Experts layers (None / 0 in dense layers): routed experts present in the file, the
    # router's parameters, all routed experts', the shared experts' (and their gate's), and each routed
    # expert's intermediate width (one number, or a list when the experts differ). gate/up/down_proj
    # are then sums over the routed experts.
    num_experts: int | None = None
    router: int = 0
    experts: int = 0
    shared_experts: int = 0
    expert_intermediate_size: int | list | None = None


class LayerContents(Record):
    """What a layer's bytes hold (with --sparsity). Projections by their schema names."""

    nonzero: int
    attention_nonzero: int
    mlp_nonzero: int
    projection_nonzero: dict  # "q_proj" -> nonzero values (weight and bias)
    projection_nm: dict  # "q_proj" -> {"2:4": share of complying groups, "4:8": ...}
    projection_zero_rows: dict  # "q_proj" -> output rows that are all zero
    projection_zero_columns: dict  # "q_proj" -> input columns that are all zero
    nm_sparsity: str | None  # "2:4" when every linear weight of the layer complies, else "4:8", else None
    effective_heads: int | None  # heads whose q rows or o columns are not all zero
    effective_kv_heads: int | None
    effective_intermediate_size: int | None  # MLP channels not zeroed in gate, up and down alike
    expert_nonzero: tuple[int, ...] = ()  # MoE layers: nonzero values of each routed expert
    expert_nm: tuple[dict, ...] = ()  # MoE layers: per routed expert, {"2:4": share of complying groups, ...}


class ModelContents(Record):
    nonzero_params: int
    sparsity: float  # 1 - nonzero / total
    nm_sparsity: str | None
    tensors: tuple[dict, ...]  # {"name", "numel", "nonzero"} per parameter tensor


class LayerStructure(Record):
    layer_idx: int
    total: int
    attention: AttentionStructure
    mlp: MlpStructure
    norm: int
    is_zero_layer: bool | None = None  # None until the contents are measured
    other: int = 0  # parameters of the layer that are neither attention, MLP nor norms
    shortcut: int = 0  # SliceGPT's attn_shortcut_Q + mlp_shortcut_Q
    # Widths the layer reads and writes (SliceGPT slices them): attention_input, attention_output,
    # mlp_input, mlp_output; empty when the layer has no shortcut matrices.
    widths: dict = {}
    fingerprint: str | None = None  # hash of sampled contents: equal for a layer kept verbatim
    # The matrix products the layer's forward runs, as weight shapes (out, in): q/k/v/o and gate/up/down
    # by their schema names (fused weights split into their parts' rows), and SliceGPT's shortcut
    # matrices by their own names. Biases are not in here: they cost no FLOPs (see compute.py).
    weight_shapes: dict = {}
    # Keys the layer attends to at most (sliding-window attention, from the config), None when all.
    attention_window: int | None = None
    contents: LayerContents | None = None  # with --sparsity
    # For the content stage, not part of the report: how stage 3 placed each of the layer's tensors
    # (full name -> (bucket, role or None)), and how each fused weight's rows divide among its parts
    # (full name -> ((role, first row, end row), ...)).
    tensor_roles: dict[str, tuple[str, str | None]] = {}
    fused_rows: dict[str, tuple[tuple[str, int, int], ...]] = {}
    # Routed experts' tensors: full name -> the expert's number, or None for a stacked tensor holding
    # every expert along its first dimension.
    expert_tensors: dict[str, int | None] = {}
    transposed: tuple[str, ...] = ()  # weights stored [in, out] (GPT-2's Conv1D)
    # Per routed expert, a hash of its sampled contents (stage 4): equal for an expert kept verbatim.
    expert_fingerprints: tuple[str, ...] = ()

    @property
    def stacked_expert_tensors(self) -> tuple[str, ...]:
        return tuple(name for name, number in self.expert_tensors.items() if number is None)


class ModelStructure(Record):
    model_name: str
    family: str
    total_params: int
    embedding_params: int
    lm_head_params: int
    tied_embeddings: bool
    final_norm_params: int
    other_params: int
    layers: tuple[LayerStructure, ...]
    hidden_size: int | None
    vocab_size: int | None
    head_dim: int | None
    head_dim_source: str
    dtypes: dict[str, int]
    other_tensors: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    config_mismatches: tuple[dict, ...] = ()
    notes: tuple[str, ...] = ()
    position_embedding_params: int = 0  # learned position embeddings (OPT)
    embedding_norm_params: int = 0  # a norm right after the embedding (Bloom)
    # Mixture-of-Experts models (None otherwise): experts chosen per token (config), routed experts per
    # layer (0 for dense layers), and the parameters one token meets: total minus the routed experts
    # plus top_k experts' worth per MoE layer.
    top_k: int | None = None
    num_experts: tuple[int, ...] | None = None
    active_params: int | None = None
    # Schema name -> the family's own name, where they differ (e.g. o_proj -> out_proj).
    projection_names: dict = {}
    slicing: dict | None = None  # SliceGPT: the slicing configuration and how it matches the shapes
    layer_prefix: str = ""  # the decoder stack's tensor names start with "<layer_prefix>.<layer_idx>."
    contents: ModelContents | None = None  # with --sparsity
    # Quantized checkpoints (prunescope.quantized.Quantization): every count above is the dense model's.
    quantization: object = None
    lm_head_shape: tuple[int, ...] | None = None  # (vocab, input width): the embedding's when tied
    # Other linear layers every token passes through outside the stack (OPT's project_in/out): name -> (out, in).
    outside_weight_shapes: dict = {}
    compute: object | None = None  # compute.ModelCompute, filled in by the compute stage

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def total_layer_params(self) -> int:
        return sum(layer.total for layer in self.layers)
