"""What each model family calls its tensors: one module per family (or per group of families that
share a layout), each a table from tensor names to roles (see `base`). The generic interpreter
(`prunescope.interpret`) and the content scan read only these tables.

To add a family: copy the closest module (`llama.py` fits most), fill its table, add it to FAMILIES
below, and add a test against the module transformers builds (tests/test_families.py).
"""

from __future__ import annotations

import re

from . import bloom, deepseek, falcon, gguf, gpt2, gpt_neox, gptj, llama, mixtral, opt, phi, phi3, qwen_moe, stacked_moe
from .base import Family

FAMILIES: tuple[Family, ...] = (llama.FAMILY, opt.FAMILY, phi.FAMILY, phi3.FAMILY, gpt2.FAMILY, gpt_neox.FAMILY,
                                falcon.FAMILY, bloom.FAMILY, gptj.FAMILY, mixtral.FAMILY, qwen_moe.FAMILY,
                                deepseek.FAMILY, stacked_moe.GRANITE_MOE, stacked_moe.GPT_OSS, stacked_moe.LLAMA4,
                                gguf.FAMILY)
SUPPORTED_MODEL_TYPES = tuple(model_type for family in FAMILIES for model_type in family.model_types)

CLASS_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "Model")
# The decoder stack: "...layers.N." in most families, "...h.N." in GPT-2, GPT-J, Falcon and Bloom,
# "blk.N." in GGUF files.
LAYER_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h)|blk)\.(?P<index>\d+)\.(?P<rest>.+)$")


def choose_family(config: dict, module_classes: dict[str, str], tensor_names) -> Family:
    """The description to read a checkpoint with, by what it says it is, in order of trust:
    0) a GGUF file's header (the reader marks it), 1) config.json's model_type, 2) its architectures, 3) the class a pickled module was saved as,
    4) else the family whose table names most of the layers' tensors (Llama's when none does)."""
    if config.get("format") == "gguf":  # llama.cpp's names, whatever architecture the header names
        return gguf.FAMILY
    by_model_type = {model_type: family for family in FAMILIES for model_type in family.model_types}
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in by_model_type:
        return by_model_type[model_type]
    for class_name in (first_architecture(config), short_class(module_classes.get(""))):
        prefix = class_prefix(class_name)
        for family in FAMILIES:
            if prefix and prefix in family.model_types.values():
                return family
    if model_type_from_classes(module_classes) in by_model_type:
        return by_model_type[model_type_from_classes(module_classes)]
    rests = [match["rest"] for match in map(LAYER_NAME.match, tensor_names) if match]
    claimed = [sum(family.place(rest)[1] is not None for rest in rests) for family in FAMILIES]
    return FAMILIES[claimed.index(max(claimed))]


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
