"""Custom transformers code shipped inside every `launch/export.py --format hf` folder of a model with
Over-Encoding or Over-Decoding heads (loaded with `trust_remote_code=True`).

The two modules are copied verbatim into the export, so they import torch and transformers only, never this
repository (pipeline/export/hf_export.py copies them; tests/pipeline/export/ load them back through
transformers' AutoModelForCausalLM)."""
