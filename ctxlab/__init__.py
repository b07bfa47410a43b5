"""ctxlab: the small library behind the book "Extending the context length of LLMs".

The chapters import the library from here, their experiments from ``ctxlab.bench.<chapter>``,
parallelism from ``ctxlab.parallel`` and figures from ``ctxlab.plots`` / ``ctxlab.widgets``.
Each name below lives in one technique module (named in its group) and is re-exported unchanged.
"""
from . import gpu_results
# instruments
from .book_files import book_folder
from .config import IGNORE, ModelConfig, reference_config, with_positions
from .measure import matmul_peak, measure_peak, median_ms, times_ms, with_other_load
# techniques
from .attention import (attention, attention_with_lse, chunked_attention, merge_partials, naive_attention,
                        sdpa_attention)
from .clipping import article_clip, clip_by_global_norm, clip_by_value, layer_norms, total_norm
from .kvcache import ContiguousKVCache, PagedKVCache, fragmentation_report, kv_cache_bytes_per_token
from .kvcache_quant import QUANT_MODES, QuantizedKVCache
from .kvcache_window import SinkWindowCache
from .packing import document_mask, pack_documents, padding_vs_packing
from .positions import rope_inv_freq
from .tasks import (FACTOR, TRAIN_LEN, dialogue_batch, markov_batches, passkey_batch, render_retrieval,
                    retrieval_batch, tracking_batch)
# the model, its training and its cost models
from .model import GPT
from .train import load_model, save_model, train, train_single
from .evaluate import answer_accuracy, passkey_accuracy, retrieval_accuracy
from .flops import (attention_flops_per_token, attention_intensity, count_flops, count_training_flops, matmul_params,
                    mlp_intensity, recompute_flops_per_token, roofline_rate, training_flops_per_token)
from .attention_io import naive_attention_io, tile_intensity, tile_sizes, tiled_attention_io
from .memory_model import (apply_techniques, count_params, filled_cache_bytes, max_context, measure_step_memory,
                           predict_step_memory)
from .model_states import model_state_bytes
from .serving import crossover_context, decode_bytes, decode_flops, predicted_step_ms, prefill, weight_bytes_read
# running ranks, and printing results
from .parallel import launch
from .bench import format_table, report_errors

__version__ = "0.1.0"


def default_device() -> str:
    """'cuda' when a GPU is present, else 'cpu': the notebooks size their problems by this."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = ["gpu_results", "book_folder", "IGNORE", "ModelConfig", "reference_config", "with_positions",
           "matmul_peak", "measure_peak", "median_ms", "times_ms", "with_other_load", "attention", "attention_with_lse", "chunked_attention",
           "merge_partials", "naive_attention", "sdpa_attention", "article_clip", "clip_by_global_norm",
           "clip_by_value", "layer_norms", "total_norm", "ContiguousKVCache", "PagedKVCache",
           "fragmentation_report", "kv_cache_bytes_per_token", "QUANT_MODES", "QuantizedKVCache",
           "SinkWindowCache", "document_mask", "pack_documents",
           "padding_vs_packing", "rope_inv_freq", "FACTOR", "TRAIN_LEN", "dialogue_batch", "markov_batches", "passkey_batch",
           "render_retrieval", "retrieval_batch", "tracking_batch",
           "GPT", "load_model", "save_model", "train", "train_single", "answer_accuracy", "passkey_accuracy",
           "retrieval_accuracy",
           "attention_flops_per_token", "attention_intensity", "count_flops", "count_training_flops",
           "matmul_params", "mlp_intensity", "recompute_flops_per_token", "roofline_rate",
           "training_flops_per_token", "naive_attention_io",
           "tile_intensity", "tile_sizes", "tiled_attention_io", "apply_techniques",
           "count_params", "filled_cache_bytes", "max_context", "measure_step_memory", "predict_step_memory",
           "model_state_bytes", "crossover_context", "decode_bytes", "decode_flops", "predicted_step_ms", "prefill", "weight_bytes_read",
           "launch", "format_table", "report_errors", "default_device"]
