"""ctxlab: the small library behind the book "Extending the context length of LLMs"."""
from .attention import attention, chunked_attention, merge_partials, naive_attention, sdpa_attention
from .config import ModelConfig, reference_config
from .kvcache import ContiguousKVCache, PagedKVCache, kv_cache_bytes_per_token
from .measure import measure_peak
from .model import GPT

__version__ = "0.1.0"


def default_device() -> str:
    """'cuda' when a GPU is present, else 'cpu': the notebooks size their problems by this."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = ["GPT", "ModelConfig", "reference_config", "attention", "naive_attention", "sdpa_attention",
           "merge_partials", "measure_peak", "ContiguousKVCache", "kv_cache_bytes_per_token", "default_device",
           "chunked_attention", "PagedKVCache"]
