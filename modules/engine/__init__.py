"""The interpretability engine: capture, patch, ablate, steer, knock out, lens and attribute on
transformers decoder models (docs/engine.md). Names are imported on first use, so importing the
package stays cheap."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "adapters": ("Adapter", "EngineError", "ModelLoadError", "get_adapter", "load_model"),
    "hooks": ("Activations", "Site", "SITE_KINDS", "capture", "capture_positions", "intervene", "patch"),
    "interventions": ("ablate", "knockout", "steer"),
    "patching": ("Cell", "patch_attn_out_sweep", "patch_cells", "patch_head_by_pos_sweep", "patch_head_sweep",
                 "patch_mlp_out_sweep", "patch_resid_sweep", "patch_sweep", "sweep_grid"),
    "lens": ("HeadLens", "head_lens", "logit_lens", "sublayer_ranks"),
    "flow": ("ContextShare", "CopyScores", "FlowNode", "context_share_by_layer", "copy_scores", "rift_layer",
             "trace_flow"),
    "metrics": ("KLRecovery", "kl_recovery", "kl_recovery_from_kl"),
    "patchscope": ("Generation", "SharedPrefix", "backpatch", "backpatch_grid", "choose_tokens", "generate_greedy",
                   "patchscope", "patchscope_grid"),
    "attribution": ("TopK", "attribution_patch", "confirm_top_k"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'modules.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"modules.engine.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
