import pytest

from ctxlab import reference_config
from ctxlab.memory_model import apply_techniques, measure_step_memory, predict_step_memory


@pytest.mark.parametrize("techniques, seq_len", [("sdpa", 512), (["sdpa", "checkpoint"], 1024)])
def test_fake_tensor_measurement_runs_and_matches_the_prediction(techniques, seq_len):
    # the traced step must not read tensor values (RoPE used to read the largest position)
    cfg = apply_techniques(reference_config(d_model=128, n_layers=2, max_seq_len=seq_len), techniques)
    measured, predicted = measure_step_memory(cfg, seq_len), predict_step_memory(cfg, seq_len)
    assert measured["states"] == pytest.approx(predicted["parameters"] + predicted["optimizer"], rel=0.01)
    step = predicted["gradients"] + predicted["activations"]
    assert abs(step - measured["step_peak"]) / measured["step_peak"] < 0.15


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="cfg"):
        measure_step_memory("reference", 128)
    with pytest.raises(ValueError, match="seq_len"):
        measure_step_memory(reference_config(), 0)
