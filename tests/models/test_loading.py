import pytest
import torch

from alambic.errors import ModelNotFoundError
from alambic.models import load_model, smollm2_directory, tiny_model
from alambic.models.loading import smollm2_gguf_path


def test_smollm2_gguf_is_found_in_the_installed_package():
    path = smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_converted_teacher_is_a_plain_fp32_safetensors_directory():
    directory = smollm2_directory()
    assert (directory / "model.safetensors").is_file()
    assert "quantization_config" not in (directory / "config.json").read_text()
    assert smollm2_directory() == directory  # converted once, reused


def test_tiny_model_is_deterministic_and_shares_the_teacher_tokenizer(tiny):
    again = tiny_model()
    for a, b in zip(tiny.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert len(tiny.tokenizer) == tiny.model.config.vocab_size == 49152
    assert tiny.tokenizer.chat_template
    other_seed = tiny_model(seed=1)
    assert not torch.equal(other_seed.model.lm_head.weight, tiny.model.lm_head.weight)


def test_a_saved_model_directory_loads_back(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.name == str(tmp_path)
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded.model(ids).logits, tiny.model(ids).logits)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
