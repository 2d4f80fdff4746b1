"""headwise.formats under bad input: settings that would do nothing are refused, not
ignored; save_quantized never leaves or overwrites a file it did not write; a file that
is not one of its own is named in a ValueError."""

from __future__ import annotations

import pytest
import torch

from headwise.formats import load_quantized, quantize, save_quantized
from headwise.models import Decoder, ModelConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Decoder(ModelConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=8)).eval()


@pytest.mark.parametrize("format,kw,needles", [
    ("bf16", {"kernel": "qcpu"}, ["kernel='qcpu' has no effect with format 'bf16'"]),
    ("fp32", {"kernel": "bogus"}, ["kernel='bogus' has no effect with format 'fp32'"]),
    ("bf16", {"smooth_alpha": 0.5}, ["smooth_alpha=0.5 has no effect with format 'bf16'"]),
    ("bf16", {"calibration_forward": lambda m, b: m(b)}, ["calibration_forward has no effect"]),
    ("fp32", {"kernel": "emulate", "smooth_alpha": 0.2}, ["kernel='emulate' and smooth_alpha=0.2 have no effect"]),
    ("int8", {"smooth_alpha": 0.5}, ["smooth_alpha=0.5 has no effect without calibration", "give calibration"]),
    ("int8", {"calibration_forward": lambda m, b: m(b)}, ["calibration_forward has no effect without calibration"]),
])
def test_a_quantize_setting_that_would_do_nothing_is_refused(model, format, kw, needles):
    """was: silently ignored (bf16 with kernel='qcpu', int8 with smooth_alpha but no
    calibration: no SmoothQuant ran)."""
    with pytest.raises(ValueError) as e:
        quantize(model, format, **kw)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_quantize_settings_that_are_used_are_accepted(model):
    ids = torch.randint(0, 40, (2, 8))
    quantize(model, "int8", kernel="emulate")
    quantize(model, "int8", calibration=[ids], smooth_alpha=0.5, calibration_forward=lambda m, b: m(b))


def test_quantize_of_something_that_is_not_a_module_is_a_type_error():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):  # was AttributeError
        quantize("model", "int8")


def test_save_quantized_to_a_folder_is_refused_and_writes_nothing(model, tmp_path):
    """was: IsADirectoryError after writing '<folder>.tmp' beside the folder, left there."""
    folder = tmp_path / "models"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name"):
        save_quantized(model, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"] and not any(folder.iterdir())


def test_save_quantized_leaves_a_users_file_of_the_temporary_name_alone(model, tmp_path):
    """was: '<path>.tmp' was written over and then renamed away: the user's file was gone."""
    mine = tmp_path / "m.safetensors.tmp"
    mine.write_text("the user's own file")
    path = save_quantized(model, tmp_path / "m.safetensors")
    assert mine.read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.safetensors.tmp"]
    torch.testing.assert_close(load_quantized(path)(torch.zeros(1, 3, dtype=torch.long)),
                               model(torch.zeros(1, 3, dtype=torch.long)))


@pytest.mark.parametrize("content", [b"garbage" * 10, b""])
def test_load_quantized_of_a_file_that_is_not_safetensors_names_it(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="x.safetensors is not a safetensors file written by save_quantized"):
        load_quantized(path)  # was: safetensors' SafetensorError, not a ValueError


@pytest.mark.parametrize("weight,bias,kw,needle", [
    (torch.randn(8), None, {}, "weight must be a floating-point tensor (out, in)"),  # was: "not enough values"
    (torch.ones(4, 8, dtype=torch.long), None, {}, "weight must be a floating-point tensor (out, in)"),
    (torch.randn(4, 8), torch.randn(5), {}, "bias must be None or a tensor of shape (out,) = (4,)"),
    (torch.randn(4, 8), None, {"input_absmax": torch.ones(8), "alpha": 2.0}, "alpha must be a float in [0, 1]"),
])
def test_int8_linear_from_float_names_a_bad_argument(weight, bias, kw, needle):
    from headwise.formats import Int8Linear

    with pytest.raises(ValueError) as e:
        Int8Linear.from_float(weight, bias, kernel="emulate", **kw)
    assert needle in str(e.value), str(e.value)


def test_int8_linear_refuses_integer_input():
    """was: an int64 input gave an int64 output (the float result cast back to x's dtype)."""
    from headwise.formats import Int8Linear

    lin = Int8Linear.from_float(torch.randn(4, 8), None, kernel="emulate")
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got dtype torch.int64"):
        lin(torch.ones(2, 8, dtype=torch.long))
