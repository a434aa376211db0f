"""Records, the typed values passed between the stages: built with checks (or, in the header reader's
loop, without them), immutable, compared by their fields. TensorInfo, a thousand per Mixtral header, is
a named tuple with the same surface."""

import pickle

import pytest

from prunescope.records import Record
from prunescope.tensors import TensorInfo

FIELDS = dict(name="model.layers.0.mlp.up_proj.weight", dtype="BF16", shape=(14336, 4096), file="x.safetensors",
              offset=8)


def test_fields_by_keyword_and_position_with_defaults():
    by_keyword = TensorInfo(**FIELDS)
    by_position = TensorInfo(*FIELDS.values())
    assert by_keyword == by_position
    assert by_keyword.stride is None and by_keyword.nbytes is None and by_keyword.is_parameter is None
    assert TensorInfo(**FIELDS, is_parameter=True) != by_keyword


class Finding(Record):
    """A record as the stages declare them: fields from annotations, defaults where a value is given."""

    file: str
    what: str
    detail: str = ""


@pytest.mark.parametrize("arguments, keywords, message", [
    ((), {"what": "os.system"}, "missing field 'file'"),
    ((), {"file": "a", "what": "b", "size": 3}, "unexpected field 'size'"),
    (("a",), {"file": "b", "what": "c"}, "repeated field 'file'"),
    (("a", "b", "c", "d"), {}, "takes 3 fields, got 4"),
])
def test_wrong_fields_are_named(arguments, keywords, message):
    with pytest.raises(TypeError, match=message):
        Finding(*arguments, **keywords)


def test_record_immutable_and_replace():
    finding = Finding("a", "os.system")
    assert finding.detail == "" and finding == Finding(file="a", what="os.system", detail="")
    with pytest.raises(AttributeError):
        finding.what = "x"
    changed = finding.replace(detail="called")
    assert (changed.detail, finding.detail) == ("called", "") and changed.file == "a"
    with pytest.raises(TypeError, match="unexpected field 'size'"):
        finding.replace(size=3)


@pytest.mark.parametrize("arguments, keywords, named", [
    ((), {k: v for k, v in FIELDS.items() if k != "file"}, "'file'"),
    ((), {**FIELDS, "size": 3}, "'size'"),
    (("a",), FIELDS, "'name'"),
])
def test_wrong_tensor_fields_are_named(arguments, keywords, named):
    with pytest.raises(TypeError, match=named):
        TensorInfo(*arguments, **keywords)


def test_tensor_immutable_and_replace():
    tensor = TensorInfo(**FIELDS)
    with pytest.raises(AttributeError):
        tensor.offset = 16
    moved = tensor.replace(offset=16)
    assert (moved.offset, tensor.offset) == (16, 8) and moved.name == tensor.name
    assert tensor.replace(shape=(2, 3)).numel == 6  # the count follows the shape
    with pytest.raises(TypeError, match="unexpected field 'size'"):
        tensor.replace(size=3)
    with pytest.raises(TypeError, match="unexpected field 'numel'"):
        tensor.replace(numel=3)
    assert tensor._replace(shape=(5,)).numel == 5  # namedtuple's own replace counts too
    with pytest.raises(TypeError, match="numel"):
        TensorInfo(**FIELDS, numel=3)  # counted, never given


def test_unchecked_is_the_same_tensor_and_numel_is_counted_when_made():
    tensor = TensorInfo.unchecked(FIELDS["name"], FIELDS["dtype"], FIELDS["shape"], FIELDS["file"], FIELDS["offset"],
                                  14336 * 4096)
    assert tensor == TensorInfo(**FIELDS)
    assert tensor.numel == TensorInfo(**FIELDS).numel == 14336 * 4096
    assert TensorInfo("x", "F32", (), "f", 0).numel == 1 and TensorInfo("x", "F32", (0, 4), "f", 0).numel == 0
    assert pickle.loads(pickle.dumps(tensor)) == tensor  # Ray workers receive tensors pickled


def test_a_header_record_comes_with_its_element_count(tmp_path):
    """The safetensors reader counts each tensor's elements while checking its byte size; the record
    carries that count, and it is the count the shape gives."""
    import torch
    from safetensors.torch import save_file

    from prunescope.readers.safetensors import read_safetensors_file

    save_file({"a": torch.zeros(3, 5), "b": torch.zeros(0, 4), "c": torch.zeros(())}, str(tmp_path / "x.safetensors"))
    tensors = {tensor.name: tensor for tensor in read_safetensors_file(str(tmp_path / "x.safetensors"))}
    assert {name: tensor.numel for name, tensor in tensors.items()} == {"a": 15, "b": 0, "c": 1}
    assert all(tensor == TensorInfo(**{field: getattr(tensor, field) for field in TensorInfo._fields})
               for tensor in tensors.values())
