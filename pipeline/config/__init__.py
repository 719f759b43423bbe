from pipeline.config.base import ConfigError, apply_overrides, check, from_dict, load_config, to_dict

__all__ = ["ConfigError", "apply_overrides", "check", "from_dict", "load_config", "to_dict"]
