"""Records, the typed values passed between the stages: built with checks (or, in the header reader's
loop, without them), immutable, compared by their fields."""

import pytest

from prunescope.tensors import TensorInfo

FIELDS = dict(name="model.layers.0.mlp.up_proj.weight", dtype="BF16", shape=(14336, 4096), file="x.safetensors",
              offset=8)


def test_fields_by_keyword_and_position_with_defaults():
    by_keyword = TensorInfo(**FIELDS)
    by_position = TensorInfo(*FIELDS.values())
    assert by_keyword == by_position
    assert by_keyword.stride is None and by_keyword.nbytes is None and by_keyword.is_parameter is None
    assert TensorInfo(**FIELDS, is_parameter=True) != by_keyword


@pytest.mark.parametrize("arguments, keywords, message", [
    ((), {k: v for k, v in FIELDS.items() if k != "file"}, "missing field 'file'"),
    ((), {**FIELDS, "size": 3}, "unexpected field 'size'"),
    (("a",), FIELDS, "repeated field 'name'"),
    (tuple(range(10)), {}, "takes 9 fields, got 10"),
])
def test_wrong_fields_are_named(arguments, keywords, message):
    with pytest.raises(TypeError, match=message):
        TensorInfo(*arguments, **keywords)


def test_immutable_and_replace():
    tensor = TensorInfo(**FIELDS)
    with pytest.raises(AttributeError):
        tensor.offset = 16
    moved = tensor.replace(offset=16)
    assert (moved.offset, tensor.offset) == (16, 8) and moved.name == tensor.name
    with pytest.raises(TypeError, match="unexpected field 'size'"):
        tensor.replace(size=3)


def test_unchecked_is_the_same_record_and_numel_is_computed_once():
    tensor = TensorInfo.unchecked(FIELDS)
    assert tensor == TensorInfo(**FIELDS)
    assert tensor.numel == 14336 * 4096
    assert tensor.__dict__["numel"] == 14336 * 4096  # cached on the instance: every stage asks
    assert tensor.replace(shape=(2, 3)).numel == 6


def test_a_header_record_comes_with_its_element_count(tmp_path):
    """The safetensors reader counts each tensor's elements while checking its byte size; the record
    carries that count where numel's cache keeps it, and it is the count the shape gives."""
    import torch
    from safetensors.torch import save_file

    from prunescope.readers.safetensors import read_safetensors_file

    save_file({"a": torch.zeros(3, 5), "b": torch.zeros(0, 4), "c": torch.zeros(())}, str(tmp_path / "x.safetensors"))
    tensors = {tensor.name: tensor for tensor in read_safetensors_file(str(tmp_path / "x.safetensors"))}
    assert {name: tensor.__dict__["numel"] for name, tensor in tensors.items()} == {"a": 15, "b": 0, "c": 1}
    assert all(tensor == TensorInfo(**{field: getattr(tensor, field) for field in TensorInfo._fields})
               for tensor in tensors.values())

