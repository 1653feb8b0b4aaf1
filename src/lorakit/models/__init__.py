"""Models: offline presets, GGUF conversion, device/precision choice, loading with a correct chat template."""
from lorakit.models.load import (Precision, attach_adapter, load_model, load_tokenizer, pick_device,  # noqa: F401
                                 pick_precision, resolve)
