"""Normalization plugins: registered by name, each with typed options and training hooks."""

from normstudy.plugins._base import (
    ParamGroup,
    Plugin,
    PluginContext,
    PluginOptions,
    StepOutputs,
    check_combination,
    get_plugin,
    instantiate,
    plugin_registry,
    register_plugin,
    validate_plugin_options,
)

__all__ = [
    "ParamGroup",
    "Plugin",
    "PluginContext",
    "PluginOptions",
    "StepOutputs",
    "check_combination",
    "get_plugin",
    "instantiate",
    "plugin_registry",
    "register_plugin",
    "validate_plugin_options",
]
