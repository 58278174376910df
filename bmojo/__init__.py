"""B'MOJO: hybrid models with eidetic and fading memory (Flax Linen), and their special cases.

``preset(name)`` builds a ``ModelConfig`` (transformer, swa, mamba, mamba2, jamba, bmojo_f,
bmojo, bmojo_f_attn, bmojo_attn); ``LanguageModel(config)`` maps tokens to (logits, aux_loss);
``init_cache`` / ``decode_step`` / ``generate`` decode recurrently with a fixed-size cache (a
``ModelCache`` holding one ``LayerCache`` per block). ``BlockType`` names the layer types;
``ModelConfig.layer_spec`` (a ``LayerSpec``) says what a layer of a type holds.
``bmojo.nnx`` holds the same layer and model as Flax NNX modules.
"""

from .attention import SlidingWindowAttention
from .blocks import MLP, Block
from .checkpoint import restore, save
from .config import PRESETS, BlockType, LayerSpec, ModelConfig, preset
from .decode import decode_step, generate, init_cache
from .layer import BMojoLayer, LayerCache
from .mamba import Mamba2Mixer, MambaMixer
from .memory import Eviction, Predictor, Selection, StoreRule
from .model import LanguageModel, ModelCache, check_tokens
from .rope import PositionEncoding

__all__ = [
    "PRESETS", "BMojoLayer", "Block", "BlockType", "Eviction", "LanguageModel", "LayerCache", "LayerSpec",
    "MLP", "Mamba2Mixer", "MambaMixer", "ModelCache", "ModelConfig", "PositionEncoding", "Predictor", "Selection",
    "SlidingWindowAttention", "StoreRule", "check_tokens", "decode_step", "generate", "init_cache",
    "preset", "restore", "save",
]
