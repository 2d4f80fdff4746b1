"""Hardware profiles (GPUs from datasheets, the local CPU measured) and the tile
planner that predicts how an attention layer's GEMMs fit them (``headwise plan``)."""

from .planner import (
    AttentionConfig,
    GemmPlan,
    LayerPlan,
    Recommendation,
    SliceWaste,
    align_dim,
    k_slice_waste,
    plan_attention,
    plan_gemm,
    recommend,
    textbook_examples,
    tile_efficiency,
    wave_efficiency,
)
from .profiles import (
    DTYPE_BYTES,
    GPU_PROFILES,
    PROFILE_NAMES,
    HardwareProfile,
    Tile,
    cpu_profile,
    get_profile,
    measure_cpu,
)

__all__ = [
    "AttentionConfig",
    "GemmPlan",
    "LayerPlan",
    "Recommendation",
    "SliceWaste",
    "align_dim",
    "k_slice_waste",
    "plan_attention",
    "plan_gemm",
    "recommend",
    "textbook_examples",
    "tile_efficiency",
    "wave_efficiency",
    "DTYPE_BYTES",
    "GPU_PROFILES",
    "PROFILE_NAMES",
    "HardwareProfile",
    "Tile",
    "cpu_profile",
    "get_profile",
    "measure_cpu",
]
