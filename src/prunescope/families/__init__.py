"""What each model family calls its tensors: one module per family (or per group of families that
share a layout), each a table from tensor names to roles (see `base`). The generic interpreter
(`prunescope.interpret`) and the content scan read only these tables.

To add a family: copy the closest module (`llama.py` fits most), fill its table, add it to REGISTRY
below, and add a test against the module transformers builds (tests/test_families.py).
"""

from __future__ import annotations

import re

from .base import Family

# Every family table, as (module, attribute, the model_types it declares), in registration order (the
# tensor-name vote gives ties to the first). A table is imported only when it is needed: a config
# naming its model_type loads that one module (start-up time counts); tests/test_families.py checks
# this index against the tables' own model_types.
REGISTRY: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("llama", "FAMILY", ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "olmo",
                         "olmo2", "stablelm")),
    ("opt", "FAMILY", ("opt",)),
    ("phi", "FAMILY", ("phi",)),
    ("phi3", "FAMILY", ("phi3",)),
    ("gpt2", "FAMILY", ("gpt2",)),
    ("gpt_neox", "FAMILY", ("gpt_neox",)),
    ("falcon", "FAMILY", ("falcon",)),
    ("bloom", "FAMILY", ("bloom",)),
    ("gptj", "FAMILY", ("gptj",)),
    ("mixtral", "FAMILY", ("mixtral",)),
    ("qwen_moe", "FAMILY", ("qwen2_moe", "qwen3_moe", "olmoe")),
    ("deepseek", "FAMILY", ("deepseek_v2", "deepseek_v3")),
    ("stacked_moe", "GRANITE_MOE", ("granitemoe",)),
    ("stacked_moe", "GPT_OSS", ("gpt_oss",)),
    ("stacked_moe", "LLAMA4", ("llama4_text",)),
    ("gguf", "FAMILY", ("deci", "gptneox", "phi2", "qwen2moe", "deepseek2")),
)
SUPPORTED_MODEL_TYPES = tuple(model_type for _, _, model_types in REGISTRY for model_type in model_types)


def load_family(module: str, attribute: str = "FAMILY") -> Family:
    return getattr(__import__(f"{__name__}.{module}", fromlist=[attribute]), attribute)


def all_families() -> tuple[Family, ...]:
    return tuple(load_family(module, attribute) for module, attribute, _ in REGISTRY)


CLASS_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "Model")
# The decoder stack: "...layers.N." in most families, "...h.N." in GPT-2, GPT-J, Falcon and Bloom,
# "blk.N." in GGUF files.
LAYER_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h)|blk)\.(?P<index>\d+)\.(?P<rest>.+)$")


def choose_family(config: dict, module_classes: dict[str, str], tensor_names) -> Family:
    """The description to read a checkpoint with, by what it says it is, in order of trust:
    0) a GGUF file's header (the reader marks it), 1) config.json's model_type, 2) its architectures, 3) the class a pickled module was saved as,
    4) else the family whose table names most of the layers' tensors (Llama's when none does)."""
    if config.get("format") == "gguf":  # llama.cpp's names, whatever architecture the header names
        return load_family("gguf", "family_of")(config.get("model_type"))
    by_model_type = {model_type: (module, attribute) for module, attribute, model_types in REGISTRY
                     for model_type in model_types}
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in by_model_type:
        return load_family(*by_model_type[model_type])
    families = all_families()
    for class_name in (first_architecture(config), short_class(module_classes.get(""))):
        prefix = class_prefix(class_name)
        for family in families:
            if prefix and prefix in family.model_types.values():
                return family
    if model_type_from_classes(module_classes) in by_model_type:
        return load_family(*by_model_type[model_type_from_classes(module_classes)])
    rests = [match["rest"] for match in map(LAYER_NAME.match, tensor_names) if match]
    claimed = [sum(family.place(rest)[1] is not None for rest in rests) for family in families]
    return families[claimed.index(max(claimed))]


def class_prefix(class_name: str | None) -> str:
    """"LlamaForCausalLM" -> "Llama": the prefix transformers gives a family's module classes."""
    for suffix in CLASS_SUFFIXES:
        if class_name and class_name.endswith(suffix):
            return class_name[: -len(suffix)]
    return ""


def first_architecture(config: dict) -> str | None:
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    return None


def short_class(qualified: str | None) -> str | None:
    """"transformers.models.llama.modeling_llama.LlamaMLP" -> "LlamaMLP"."""
    return qualified.rsplit(".", 1)[-1] if qualified else None


def model_type_from_classes(module_classes: dict[str, str]) -> str | None:
    """The model_type a pickled transformers module names in its class's module path."""
    match = re.search(r"\.models\.(\w+)\.modeling_", module_classes.get("", ""))
    return match.group(1) if match else None
